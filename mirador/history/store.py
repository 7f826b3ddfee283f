"""The history store: every question, the stages of the chain that answered it, their timings, ratings
and speculation. Only sqlite3 is imported: `ask` loads this module after the answer has streamed."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from mirador.errors import MiradorError
from mirador.history.records import (
    SPECULATION_COLUMNS,
    STAGE_COLUMNS,
    STAGE_MARKS,
    EnergyTotal,
    ExchangeRecord,
    ExchangeSummary,
    RatingRecord,
    StoredExchange,
    opt_text,
    options_json,
    speculation_from_row,
    speculation_row,
    stage_from_row,
    stage_row,
    text,
)
from mirador.history.schema import open_db, restrict, run_with_retry

PREVIEW_CHARS = 200

T = TypeVar("T")


class HistoryStore:
    """The history database. Opens on first use; safe to share between threads of one process."""

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()

    @classmethod
    def open_default(cls) -> HistoryStore:
        from mirador.config import paths

        p = paths()
        p.ensure_data_dir()
        restrict(p.data_dir, 0o700)
        return cls(p.history_db)

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- writing ---------------------------------------------------------------------------------

    def save_exchange(self, record: ExchangeRecord) -> tuple[int, int]:
        """Store an exchange, its stages and its search row in one transaction: (exchange_id, conversation_id)."""
        created = float(record.created_at or time.time())
        prompt = text(record.prompt)
        stages = [stage_row(stage) for stage in record.stages]
        answers = "\n\n".join(row[4] for row in stages if row[4])

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            conversation_id = self._conversation_for(conn, record.conversation_id, created, prompt)
            exchange_id = conn.execute(
                "INSERT INTO exchanges (conversation_id, created_at, prompt, system, options_json, status)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, created, prompt, opt_text(record.system), options_json(record.options),
                 text(record.status)),
            ).lastrowid
            conn.executemany(
                f"INSERT INTO stages (exchange_id, {STAGE_COLUMNS}) VALUES ({STAGE_MARKS})",
                [(exchange_id, *row) for row in stages],
            )
            conn.execute("INSERT INTO exchanges_fts (rowid, prompt, answers) VALUES (?, ?, ?)",
                         (exchange_id, prompt, answers))
            if record.speculation is not None:
                conn.execute(f"INSERT INTO speculations (exchange_id, {SPECULATION_COLUMNS})"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (exchange_id, *speculation_row(record.speculation)))
            return int(exchange_id), conversation_id

        return self._transaction(work, "IMMEDIATE")

    @staticmethod
    def _conversation_for(conn: sqlite3.Connection, wanted: int | None, created: float, prompt: str) -> int:
        title = prompt.strip().split("\n", 1)[0][:80] if prompt.strip() else None
        if wanted is None:
            cursor = conn.execute("INSERT INTO conversations (created_at, title) VALUES (?, ?)", (created, title))
            return int(cursor.lastrowid)
        # A conversation that vanished meanwhile is recreated: an answer already shown is never dropped.
        conn.execute("INSERT OR IGNORE INTO conversations (id, created_at, title) VALUES (?, ?, ?)",
                     (int(wanted), created, title))
        return int(wanted)

    def add_rating(self, exchange_id: int, score: int, note: str | None = None) -> None:
        """Keep every rating (the learner wants the history of opinions); the latest one counts."""
        if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5:
            raise MiradorError(f"a rating is a whole number from 1 to 5, not {score!r}")

        def work(conn: sqlite3.Connection) -> None:
            if not _exists(conn, "exchanges", exchange_id):
                raise _unknown_exchange(exchange_id)
            conn.execute("INSERT INTO ratings (exchange_id, score, note, created_at) VALUES (?, ?, ?, ?)",
                         (exchange_id, score, opt_text(note), time.time()))

        self._transaction(work, "IMMEDIATE")

    def delete_exchange(self, exchange_id: int) -> bool:
        """Forget an exchange everywhere, search index included; an emptied conversation goes too."""

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT conversation_id FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
            if row is None:
                return False
            for table, column in (("stages", "exchange_id"), ("ratings", "exchange_id"),
                                  ("speculations", "exchange_id"), ("exchanges_fts", "rowid"), ("exchanges", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (exchange_id,))
            conn.execute("DELETE FROM conversations WHERE id = ? AND NOT EXISTS"
                         " (SELECT 1 FROM exchanges WHERE conversation_id = ?)", (row[0], row[0]))
            return True

        return self._transaction(work, "IMMEDIATE")

    # -- reading ---------------------------------------------------------------------------------

    def conversation_messages(self, conversation_id: int) -> list[dict]:
        """The conversation as chat messages. An exchange with no answer text is left out, so that
        user and assistant turns keep alternating."""
        rows = self._transaction(lambda conn: conn.execute(
            "SELECT e.prompt, (SELECT s.text FROM stages s WHERE s.exchange_id = e.id AND s.text != ''"
            "  ORDER BY s.idx DESC, s.rowid DESC LIMIT 1) FROM exchanges e"
            " WHERE e.conversation_id = ? ORDER BY e.id", (conversation_id,)).fetchall())
        messages: list[dict] = []
        for prompt, answer in rows:
            if answer:
                messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return messages

    def last_conversation_id(self) -> int | None:
        return self._scalar("SELECT conversation_id FROM exchanges ORDER BY id DESC LIMIT 1")

    def last_exchange_id(self) -> int | None:
        return self._scalar("SELECT max(id) FROM exchanges")

    def conversation_exists(self, conversation_id: int) -> bool:
        return self._scalar("SELECT 1 FROM conversations WHERE id = ?", (conversation_id,)) is not None

    def count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM exchanges") or 0)

    def recent(self, limit: int = 20) -> list[ExchangeSummary]:
        """The newest exchanges first."""

        def work(conn: sqlite3.Connection) -> list[ExchangeSummary]:
            rows = conn.execute(
                "SELECT id, conversation_id, created_at, status, substr(prompt, 1, ?), NULL FROM exchanges"
                " ORDER BY created_at DESC, id DESC LIMIT ?", (PREVIEW_CHARS, limit)).fetchall()
            return _summaries(conn, rows)

        return self._transaction(work, "DEFERRED")

    def search(self, text: str, limit: int = 20) -> list[ExchangeSummary]:
        """Exchanges whose prompt or answers hold every word of `text` (as word prefixes), best
        match first, newer first among equals. The user's text is never FTS5 syntax."""
        query = fts_query(text)
        if not query:
            return []

        def work(conn: sqlite3.Connection) -> list[ExchangeSummary]:
            try:
                rows = conn.execute(
                    "SELECT e.id, e.conversation_id, e.created_at, e.status, substr(e.prompt, 1, ?),"
                    " snippet(exchanges_fts, -1, '', '', '…', 12)"
                    " FROM exchanges_fts JOIN exchanges e ON e.id = exchanges_fts.rowid"
                    " WHERE exchanges_fts MATCH ?"
                    " ORDER BY bm25(exchanges_fts, 2.0, 1.0), e.created_at DESC, e.id DESC LIMIT ?",
                    (PREVIEW_CHARS, query, limit)).fetchall()
            except sqlite3.OperationalError as exc:
                if "fts5" in str(exc).lower():  # quoting should prevent this; a search never crashes
                    return []
                raise
            return _summaries(conn, rows)

        return self._transaction(work, "DEFERRED")

    def stage_rates(self, per_model: int = 50) -> dict[str, list[tuple[float, float | None]]]:
        """Decode speed (tokens/s) and load time (ms) of each model's newest answers, newest first:
        what the energy cost model refines its defaults with. Short answers say little about speed."""

        def work(conn: sqlite3.Connection) -> dict[str, list[tuple[float, float | None]]]:
            rates: dict[str, list[tuple[float, float | None]]] = {}
            for model, tps, load_ms in conn.execute(
                    "SELECT model, tokens_per_s, load_ms FROM ("
                    " SELECT model, tokens_per_s, load_ms,"
                    "  row_number() OVER (PARTITION BY model ORDER BY exchange_id DESC, idx DESC) AS n"
                    " FROM stages WHERE tokens_per_s > 0 AND eval_count >= 16)"
                    " WHERE n <= ? ORDER BY model, n", (per_model,)):
                rates.setdefault(model, []).append((float(tps), load_ms))
            return rates

        return self._transaction(work, None)

    def energy_totals(self, by: str = "model", since: float | None = None) -> list[EnergyTotal]:
        """Energy of the stages in history, summed by model or by local day (newest day first)."""
        if by not in ("model", "day"):
            raise ValueError(f"energy totals are by model or by day, not {by!r}")
        key = "s.model" if by == "model" else "date(e.created_at, 'unixepoch', 'localtime')"
        order = "sum(s.energy_j) DESC, key" if by == "model" else "key DESC"
        sql = (f"SELECT {key} AS key, count(DISTINCT s.exchange_id), count(*), coalesce(sum(s.eval_count), 0),"
               " coalesce(sum(s.energy_j), 0), count(s.energy_j), coalesce(sum(s.measured_energy_j), 0),"
               " count(s.measured_energy_j) FROM stages s JOIN exchanges e ON e.id = s.exchange_id"
               f" WHERE e.created_at >= ? GROUP BY key ORDER BY {order}")
        rows = self._transaction(lambda conn: conn.execute(sql, (since or 0.0,)).fetchall(), None)
        return [EnergyTotal(*row) for row in rows]

    def get(self, exchange_id: int) -> StoredExchange | None:
        return self._transaction(lambda conn: _load_exchange(conn, exchange_id), "DEFERRED")

    def iter_exchanges(self, after_id: int = 0, batch: int = 100) -> Iterator[StoredExchange]:
        """Every exchange in id order, read in batches (to rebuild the memory index or a dataset)."""
        while True:
            ids = self._transaction(lambda conn, start=after_id: [row[0] for row in conn.execute(
                "SELECT id FROM exchanges WHERE id > ? ORDER BY id LIMIT ?", (start, batch))], None)
            if not ids:
                return
            for exchange_id in ids:
                exchange = self.get(exchange_id)
                if exchange is not None:
                    yield exchange
            after_id = ids[-1]

    # -- plumbing --------------------------------------------------------------------------------

    def _scalar(self, sql: str, params: tuple = ()) -> Any:
        row = self._transaction(lambda conn: conn.execute(sql, params).fetchone(), None)
        return row[0] if row else None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_db(self.db_path)
        return self._conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T], begin: str | None = None) -> T:
        with self._lock:
            return run_with_retry(self._connection(), work, begin, self.db_path)


def _exists(conn: sqlite3.Connection, table: str, row_id: int) -> bool:
    return conn.execute(f"SELECT 1 FROM {table} WHERE id = ?", (row_id,)).fetchone() is not None


def _unknown_exchange(exchange_id: int) -> MiradorError:
    return MiradorError(f"there is no exchange with id {exchange_id}",
                        hint="`mirador history` lists the ids")


def _summaries(conn: sqlite3.Connection, rows: list[tuple]) -> list[ExchangeSummary]:
    """Attach each exchange's chain of models and its ratings (two queries, not two per row)."""
    ids = [row[0] for row in rows]
    marks = ", ".join("?" * len(ids))
    models: dict[int, list[str]] = {i: [] for i in ids}
    ratings: dict[int, tuple[int | None, int]] = {}
    if ids:
        for exchange_id, model in conn.execute(
                f"SELECT exchange_id, model FROM stages WHERE exchange_id IN ({marks})"
                " ORDER BY exchange_id, idx, rowid", ids):
            models[exchange_id].append(model)
        for exchange_id, score, count in conn.execute(
                f"SELECT exchange_id, score, count(*) OVER (PARTITION BY exchange_id) FROM ratings"
                f" WHERE exchange_id IN ({marks}) ORDER BY id", ids):
            ratings[exchange_id] = (score, count)  # ordered by id: the last one seen is the latest
    return [
        ExchangeSummary(id=row[0], conversation_id=row[1], created_at=row[2], status=row[3],
                        prompt_start=row[4], models=models[row[0]], rating=ratings.get(row[0], (None, 0))[0],
                        rating_count=ratings.get(row[0], (None, 0))[1], snippet=row[5])
        for row in rows
    ]


def _load_exchange(conn: sqlite3.Connection, exchange_id: int) -> StoredExchange | None:
    row = conn.execute("SELECT id, conversation_id, created_at, status, prompt, system, options_json"
                       " FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
    if row is None:
        return None
    stages = [stage_from_row(r) for r in conn.execute(
        f"SELECT {STAGE_COLUMNS} FROM stages WHERE exchange_id = ? ORDER BY idx, rowid", (exchange_id,))]
    spec = conn.execute(f"SELECT {SPECULATION_COLUMNS} FROM speculations WHERE exchange_id = ?",
                        (exchange_id,)).fetchone()
    ratings = [RatingRecord(*r) for r in conn.execute(
        "SELECT id, score, note, created_at FROM ratings WHERE exchange_id = ? ORDER BY id", (exchange_id,))]
    try:
        options = json.loads(row[6] or "{}")
    except ValueError:
        options = {}
    return StoredExchange(id=row[0], conversation_id=row[1], created_at=row[2], status=row[3], prompt=row[4],
                          system=row[5], options=options, stages=stages, ratings=ratings,
                          speculation=speculation_from_row(spec) if spec else None)


def fts_query(words: str) -> str:
    """The user's words as an FTS5 query that cannot be syntax: each word a quoted phrase (quotes
    doubled) matched as a prefix, all words required. Words with no letter or digit are dropped,
    since an empty phrase is an FTS5 error."""
    terms = []
    for word in text(words).split():
        if any(ch.isalnum() for ch in word):
            terms.append('"' + word.replace('"', '""') + '"*')
    return " ".join(terms)
