"""History: every question, the stages of the chain that answered it, their timings, and ratings.

history.db is the source of truth (the memory index is rebuilt from it), and
several `mirador` processes may write it at once (parallel asks, a cron job), so
the file runs in WAL mode and every write is one BEGIN IMMEDIATE transaction,
retried with backoff while another process holds the lock. Only sqlite3 is
imported: `ask` loads this module after the answer has streamed.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mirador.errors import MiradorError

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 5_000  # SQLite's own wait for a lock, per attempt
LOCK_PATIENCE_S = 60.0  # our retry loop's total wait before telling the user
PREVIEW_CHARS = 200
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

T = TypeVar("T")


@dataclass
class StageRecord:
    index: int  # 0-based position in the chain
    model: str
    purpose: str  # "quick_ack" | "core_analysis" | "deep_synthesis" | "answer"
    confidence: float
    text: str = ""
    done_reason: str | None = None
    error: str | None = None
    interrupted: bool = False
    started_at: float = 0.0
    ttft_ms: float | None = None
    load_ms: float | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    eval_ms: float | None = None
    tokens_per_s: float | None = None
    total_ms: float | None = None
    energy_j: float | None = None  # estimated by the energy cost model
    energy_basis: str | None = None  # what the estimate rests on: "default", "measured tokens/s", "measured power"
    measured_energy_j: float | None = None  # from a sensor over the answer, where one was readable
    measured_by: str | None = None  # "RAPL" or "battery"


@dataclass
class ExchangeRecord:
    prompt: str
    status: str  # "complete" | "partial" | "interrupted" | "failed"
    stages: list[StageRecord] = field(default_factory=list)
    conversation_id: int | None = None  # None starts a new conversation
    system: str | None = None
    options: dict = field(default_factory=dict)
    created_at: float = 0.0  # 0 means now


@dataclass
class RatingRecord:
    id: int
    score: int
    note: str | None
    created_at: float


@dataclass
class StoredExchange:
    """An exchange as read back: the record plus its id, conversation and every rating, oldest first."""

    id: int
    conversation_id: int
    created_at: float
    status: str
    prompt: str
    system: str | None
    options: dict
    stages: list[StageRecord]
    ratings: list[RatingRecord]

    @property
    def rating(self) -> int | None:
        """The latest rating counts: the user changed their mind, the older ones stay for learning."""
        return self.ratings[-1].score if self.ratings else None

    @property
    def final_text(self) -> str:
        return _final_text(self.stages)

    @property
    def models(self) -> list[str]:
        return [stage.model for stage in self.stages]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rating"] = self.rating
        return data


@dataclass
class ExchangeSummary:
    """One line of `mirador history`: enough to pick an exchange, not its whole text."""

    id: int
    conversation_id: int
    created_at: float
    status: str
    prompt_start: str  # the first PREVIEW_CHARS characters
    models: list[str]
    rating: int | None
    rating_count: int = 0
    snippet: str | None = None  # search only: where the words matched

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EnergyTotal:
    """One line of `mirador history --energy`: the energy of a model's stages, or of a day's answers."""

    key: str  # the model, or the day as YYYY-MM-DD (local time)
    answers: int  # exchanges with at least one stage counted here
    stages: int
    tokens: int
    energy_j: float  # the sum of the estimates there are
    estimated_stages: int  # stages that have an estimate (older rows have none)
    measured_j: float
    measured_stages: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _final_text(stages: list[StageRecord]) -> str:
    for stage in reversed(stages):
        if stage.text:
            return stage.text
    return ""


_SCHEMA_V1 = [
    """CREATE TABLE IF NOT EXISTS conversations (
        id INTEGER PRIMARY KEY, created_at REAL NOT NULL, title TEXT)""",
    """CREATE TABLE IF NOT EXISTS exchanges (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id),
        created_at REAL NOT NULL, prompt TEXT NOT NULL, system TEXT,
        options_json TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS exchanges_by_conversation ON exchanges(conversation_id, id)",
    "CREATE INDEX IF NOT EXISTS exchanges_by_time ON exchanges(created_at)",
    """CREATE TABLE IF NOT EXISTS stages (
        exchange_id INTEGER NOT NULL REFERENCES exchanges(id), idx INTEGER NOT NULL,
        model TEXT NOT NULL, purpose TEXT NOT NULL, confidence REAL, text TEXT NOT NULL DEFAULT '',
        done_reason TEXT, error TEXT, interrupted INTEGER NOT NULL DEFAULT 0, started_at REAL,
        ttft_ms REAL, load_ms REAL, prompt_eval_count INTEGER, eval_count INTEGER,
        eval_ms REAL, tokens_per_s REAL, total_ms REAL)""",
    "CREATE INDEX IF NOT EXISTS stages_by_exchange ON stages(exchange_id, idx)",
    """CREATE TABLE IF NOT EXISTS ratings (
        id INTEGER PRIMARY KEY AUTOINCREMENT, exchange_id INTEGER NOT NULL REFERENCES exchanges(id),
        score INTEGER NOT NULL, note TEXT, created_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS ratings_by_exchange ON ratings(exchange_id, id)",
    # rowid = exchanges.id, so `memory forget` can delete one exchange's row directly.
    """CREATE VIRTUAL TABLE IF NOT EXISTS exchanges_fts USING fts5(
        prompt, answers, tokenize = 'unicode61 remove_diacritics 2')""",
]

# Version 2: the energy of every stage (mirador.energy.accounting), estimated and measured.
_SCHEMA_V2 = [
    "ALTER TABLE stages ADD COLUMN energy_j REAL",
    "ALTER TABLE stages ADD COLUMN energy_basis TEXT",
    "ALTER TABLE stages ADD COLUMN measured_energy_j REAL",
    "ALTER TABLE stages ADD COLUMN measured_by TEXT",
]

# _MIGRATIONS[n] takes a database from user_version n to n + 1.
_MIGRATIONS: list[list[str]] = [_SCHEMA_V1, _SCHEMA_V2]

_STAGE_COLUMNS = (
    "idx, model, purpose, confidence, text, done_reason, error, interrupted, started_at, ttft_ms, "
    "load_ms, prompt_eval_count, eval_count, eval_ms, tokens_per_s, total_ms, "
    "energy_j, energy_basis, measured_energy_j, measured_by"
)
_STAGE_MARKS = ", ".join("?" * (_STAGE_COLUMNS.count(",") + 2))  # the columns and exchange_id


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
        _restrict(p.data_dir, 0o700)
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
        prompt = _text(record.prompt)
        stages = [_stage_row(stage) for stage in record.stages]
        answers = "\n\n".join(row[4] for row in stages if row[4])

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            conversation_id = self._conversation_for(conn, record.conversation_id, created, prompt)
            exchange_id = conn.execute(
                "INSERT INTO exchanges (conversation_id, created_at, prompt, system, options_json, status)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, created, prompt, _opt_text(record.system), _options_json(record.options),
                 _text(record.status)),
            ).lastrowid
            conn.executemany(
                f"INSERT INTO stages (exchange_id, {_STAGE_COLUMNS}) VALUES ({_STAGE_MARKS})",
                [(exchange_id, *row) for row in stages],
            )
            conn.execute("INSERT INTO exchanges_fts (rowid, prompt, answers) VALUES (?, ?, ?)",
                         (exchange_id, prompt, answers))
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
                         (exchange_id, score, _opt_text(note), time.time()))

        self._transaction(work, "IMMEDIATE")

    def delete_exchange(self, exchange_id: int) -> bool:
        """Forget an exchange everywhere, search index included; an emptied conversation goes too."""

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT conversation_id FROM exchanges WHERE id = ?", (exchange_id,)).fetchone()
            if row is None:
                return False
            for table, column in (("stages", "exchange_id"), ("ratings", "exchange_id"),
                                  ("exchanges_fts", "rowid"), ("exchanges", "id")):
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
            self._conn = _open(self.db_path)
        return self._conn

    def _transaction(self, work: Callable[[sqlite3.Connection], T], begin: str | None = None) -> T:
        with self._lock:
            return _run_with_retry(self._connection(), work, begin, self.db_path)


def _open(db_path: Path) -> sqlite3.Connection:
    _prepare_file(db_path)
    try:
        # isolation_level=None: we issue BEGIN ourselves, so a write always takes the lock up front.
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise _storage_error(db_path, exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Switching to WAL needs a moment alone with the file; the retry loop waits for it.
        _run_with_retry(conn, lambda c: c.execute("PRAGMA journal_mode = WAL").fetchone(), None, db_path)
        current = _run_with_retry(conn, lambda c: c.execute("PRAGMA user_version").fetchone()[0], None, db_path)
        if current != SCHEMA_VERSION:  # only then take the write lock: most opens find the schema ready
            _run_with_retry(conn, _migrate, "IMMEDIATE", db_path)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    # Read inside the write transaction: another process may have migrated while we waited for the lock.
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise MiradorError(
            f"the history database was written by a newer Mirador (schema {version}, this one knows {SCHEMA_VERSION})",
            hint="upgrade Mirador: pip install -U mirador")
    while version < SCHEMA_VERSION:
        for statement in _MIGRATIONS[version]:
            conn.execute(statement)
        version += 1
        conn.execute(f"PRAGMA user_version = {version}")


def _run_with_retry(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T],
                    begin: str | None, db_path: Path) -> T:
    """Run `work` in one transaction; start it again from scratch while another process holds the lock."""
    deadline = time.monotonic() + LOCK_PATIENCE_S
    delay = 0.005
    while True:
        try:
            if begin:
                conn.execute(f"BEGIN {begin}")
            result = work(conn)
            if begin:
                conn.execute("COMMIT")
            return result
        except sqlite3.OperationalError as exc:
            _rollback(conn)
            if not _is_busy(exc):
                raise _storage_error(db_path, exc) from exc
            if time.monotonic() > deadline:
                raise MiradorError(
                    f"the history database {db_path} stayed busy for {LOCK_PATIENCE_S:.0f} s",
                    hint="another mirador process is holding it; try again, or look for a stuck one") from exc
        except sqlite3.DatabaseError as exc:
            _rollback(conn)
            raise _storage_error(db_path, exc) from exc
        except BaseException:
            _rollback(conn)
            raise
        # Jitter keeps twenty waiting processes from waking up in lock-step.
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 0.2)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    message = str(exc).lower()
    return "locked" in message or "busy" in message


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # a failed rollback leaves nothing committed; the original error is what matters


def _storage_error(db_path: Path, exc: Exception) -> MiradorError:
    return MiradorError(
        f"the history database {db_path} cannot be used: {exc}",
        hint="check the disk and its permissions; if the file is damaged, move it aside"
             " and Mirador starts a new one")


def _prepare_file(db_path: Path) -> None:
    """Create the file owner-only before SQLite does (it would use 0644); -wal and -shm inherit its mode."""
    try:
        if not db_path.parent.exists():
            db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise _storage_error(db_path, exc) from exc
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        _restrict(path, 0o600)


def _restrict(path: Path, mode: int) -> None:
    """Take away group and other access from a file of ours left wider by an older version or umask."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o777 & ~mode:
            os.chmod(path, mode)
    except OSError:
        pass  # missing or not ours: nothing to tighten


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
    stages = [
        StageRecord(index=r[0], model=r[1], purpose=r[2], confidence=r[3], text=r[4], done_reason=r[5],
                    error=r[6], interrupted=bool(r[7]), started_at=r[8] or 0.0, ttft_ms=r[9], load_ms=r[10],
                    prompt_eval_count=r[11], eval_count=r[12], eval_ms=r[13], tokens_per_s=r[14],
                    total_ms=r[15], energy_j=r[16], energy_basis=r[17], measured_energy_j=r[18],
                    measured_by=r[19])
        for r in conn.execute(f"SELECT {_STAGE_COLUMNS} FROM stages WHERE exchange_id = ?"
                              " ORDER BY idx, rowid", (exchange_id,))
    ]
    ratings = [RatingRecord(*r) for r in conn.execute(
        "SELECT id, score, note, created_at FROM ratings WHERE exchange_id = ? ORDER BY id", (exchange_id,))]
    try:
        options = json.loads(row[6] or "{}")
    except ValueError:
        options = {}
    return StoredExchange(id=row[0], conversation_id=row[1], created_at=row[2], status=row[3], prompt=row[4],
                          system=row[5], options=options, stages=stages, ratings=ratings)


def fts_query(text: str) -> str:
    """The user's words as an FTS5 query that cannot be syntax: each word a quoted phrase (quotes
    doubled) matched as a prefix, all words required. Words with no letter or digit are dropped,
    since an empty phrase is an FTS5 error."""
    terms = []
    for word in _text(text).split():
        if any(ch.isalnum() for ch in word):
            terms.append('"' + word.replace('"', '""') + '"*')
    return " ".join(terms)


# -- making values storable ---------------------------------------------------------------------


def _text(value: Any) -> str:
    """A str SQLite can encode. Lone surrogates (from errors="surrogateescape" or a broken decoder)
    make UTF-8 encoding fail; pairs are joined into the character they mean, lone ones become U+FFFD."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _options_json(options: Any) -> str:
    # ensure_ascii escapes lone surrogates too; default=str keeps an odd value rather than losing the row.
    try:
        return json.dumps(options or {}, ensure_ascii=True, default=str)
    except (TypeError, ValueError):
        return "{}"


def _stage_row(stage: StageRecord) -> tuple:
    return (
        _int(stage.index) or 0, _text(stage.model), _text(stage.purpose), _float(stage.confidence),
        _text(stage.text), _opt_text(stage.done_reason), _opt_text(stage.error), int(bool(stage.interrupted)),
        _float(stage.started_at), _float(stage.ttft_ms), _float(stage.load_ms), _int(stage.prompt_eval_count),
        _int(stage.eval_count), _float(stage.eval_ms), _float(stage.tokens_per_s), _float(stage.total_ms),
        _float(stage.energy_j), _opt_text(stage.energy_basis), _float(stage.measured_energy_j),
        _opt_text(stage.measured_by),
    )
