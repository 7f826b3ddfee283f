"""A cache of sentence vectors, so each question of a conversation embeds only what is new.

The compiler embeds every sentence of the history on every question; all but
the last exchange's were embedded last time. Vectors are kept in SQLite in the
data dir, keyed by the embedder's name and the text's hash (vectors of
different embedders never mix), and the least recently used are dropped past
MAX_ROWS. A cache that cannot be opened or written only costs speed.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mirador.context.embedding import Vectors

MAX_ROWS = 50_000


class CachedEmbedder:
    """Wraps any embedder (`name`, `embed(texts).vectors`) with a persistent vector cache."""

    def __init__(self, embedder: Any, path: Path | str):
        self.embedder = embedder
        self.name = getattr(embedder, "name", type(embedder).__name__)
        self.dimension = getattr(embedder, "dimension", None)
        self._path = str(path)
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection | None:
        if self._conn is None:
            try:
                if self._path != ":memory:":
                    Path(self._path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                conn = sqlite3.connect(self._path, timeout=2, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL,"
                             " used REAL NOT NULL)")
                self._conn = conn
            except (sqlite3.Error, OSError):
                return None
        return self._conn

    def _key(self, text: str) -> str:
        return hashlib.sha256(f"{self.name}\0{text}".encode()).hexdigest()

    def embed(self, texts: str | Sequence[str]) -> Vectors:
        import numpy as np

        items = [texts] if isinstance(texts, str) else list(texts)
        keys = [self._key(t) for t in items]
        found: dict[str, Any] = {}
        db = self._db()
        if db is not None:
            try:
                for start in range(0, len(keys), 500):
                    chunk = keys[start:start + 500]
                    rows = db.execute(f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(chunk))})",
                                      chunk).fetchall()
                    found.update({key: np.frombuffer(blob, dtype=np.float32) for key, blob in rows})
            except sqlite3.Error:
                found = {}
        missing = [i for i, key in enumerate(keys) if key not in found]
        if missing:
            fresh = np.asarray(self.embedder.embed([items[i] for i in missing]).vectors, dtype=np.float32)
            for row, i in enumerate(missing):
                found[keys[i]] = fresh[row]
        self._store(keys, found, missing)
        return Vectors(np.stack([found[key] for key in keys]) if keys else np.zeros((0, self.dimension or 0)))

    def _store(self, keys: list[str], found: dict[str, Any], missing: list[int]) -> None:
        db = self._db()
        if db is None:
            return
        now = time.time()
        try:
            with db:
                db.executemany("INSERT OR REPLACE INTO vectors (key, vec, used) VALUES (?, ?, ?)",
                               [(keys[i], found[keys[i]].tobytes(), now) for i in missing])
                db.executemany("UPDATE vectors SET used = ? WHERE key = ?", [(now, k) for k in set(keys)])
                if missing and db.execute("SELECT count(*) FROM vectors").fetchone()[0] > MAX_ROWS:
                    db.execute("DELETE FROM vectors WHERE key IN (SELECT key FROM vectors ORDER BY used"
                               " LIMIT ?)", (MAX_ROWS // 10,))
        except sqlite3.Error:
            pass  # a busy or read-only cache only costs the next question the embedding time

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
