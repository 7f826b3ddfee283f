"""history.db's schema, its migrations, and the plumbing every access goes through.

Several `mirador` processes may write the file at once (parallel asks, a cron
job), so it runs in WAL mode and every write is one BEGIN IMMEDIATE
transaction, retried with backoff while another process holds the lock.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mirador.errors import MiradorError

SCHEMA_VERSION = 4
BUSY_TIMEOUT_MS = 5_000  # SQLite's own wait for a lock, per attempt
LOCK_PATIENCE_S = 60.0  # our retry loop's total wait before telling the user
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6

T = TypeVar("T")

SCHEMA_V1 = [
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
SCHEMA_V2 = [
    "ALTER TABLE stages ADD COLUMN energy_j REAL",
    "ALTER TABLE stages ADD COLUMN energy_basis TEXT",
    "ALTER TABLE stages ADD COLUMN measured_energy_j REAL",
    "ALTER TABLE stages ADD COLUMN measured_by TEXT",
]

# Version 3 (predictive preloading and speculation): whether each stage found its model loaded and
# what it waited, and per exchange the speculative first stages and what the losers cost. Older rows
# keep NULL there: `history --latency` derives their hits from load_ms.
SCHEMA_V3 = [
    "ALTER TABLE stages ADD COLUMN preload_hit INTEGER",
    "ALTER TABLE stages ADD COLUMN wait_ms REAL",
    """CREATE TABLE IF NOT EXISTS speculations (
        exchange_id INTEGER PRIMARY KEY REFERENCES exchanges(id), winner TEXT NOT NULL, margin REAL,
        decided_by TEXT, decide_ms REAL, wasted_tokens INTEGER NOT NULL DEFAULT 0,
        wasted_seconds REAL NOT NULL DEFAULT 0, wasted_energy_j REAL,
        candidates_json TEXT NOT NULL DEFAULT '[]')""",
]

# Version 4: the DNA fragment each stage's system message carried, exactly as sent ('' when the
# answer had no DNA: --no-dna, or no DNA file). The training set joins it to `exchanges.system` to
# get the system prompt of the time. Older rows keep NULL: not recorded, so the learner falls back
# to the current DNA and says how many examples it reconstructed that way.
SCHEMA_V4 = [
    "ALTER TABLE stages ADD COLUMN dna_fragment TEXT",
]

# MIGRATIONS[n] takes a database from user_version n to n + 1.
MIGRATIONS: list[list[str]] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4]


def open_db(db_path: Path) -> sqlite3.Connection:
    prepare_file(db_path)
    try:
        # isolation_level=None: we issue BEGIN ourselves, so a write always takes the lock up front.
        conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise storage_error(db_path, exc) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # Switching to WAL needs a moment alone with the file; the retry loop waits for it.
        run_with_retry(conn, lambda c: c.execute("PRAGMA journal_mode = WAL").fetchone(), None, db_path)
        current = run_with_retry(conn, lambda c: c.execute("PRAGMA user_version").fetchone()[0], None, db_path)
        if current != SCHEMA_VERSION:  # only then take the write lock: most opens find the schema ready
            run_with_retry(conn, migrate, "IMMEDIATE", db_path)
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    # Read inside the write transaction: another process may have migrated while we waited for the lock.
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise MiradorError(
            f"the history database was written by a newer Mirador (schema {version}, this one knows {SCHEMA_VERSION})",
            hint="upgrade Mirador: pip install -U mirador")
    while version < SCHEMA_VERSION:
        for statement in MIGRATIONS[version]:
            conn.execute(statement)
        version += 1
        conn.execute(f"PRAGMA user_version = {version}")


def run_with_retry(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T],
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
                raise storage_error(db_path, exc) from exc
            if time.monotonic() > deadline:
                raise MiradorError(
                    f"the history database {db_path} stayed busy for {LOCK_PATIENCE_S:.0f} s",
                    hint="another mirador process is holding it; try again, or look for a stuck one") from exc
        except sqlite3.DatabaseError as exc:
            _rollback(conn)
            raise storage_error(db_path, exc) from exc
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


def storage_error(db_path: Path, exc: Exception) -> MiradorError:
    return MiradorError(
        f"the history database {db_path} cannot be used: {exc}",
        hint="check the disk and its permissions; if the file is damaged, move it aside"
             " and Mirador starts a new one")


def prepare_file(db_path: Path) -> None:
    """Create the file owner-only before SQLite does (it would use 0644); -wal and -shm inherit its mode."""
    try:
        if not db_path.parent.exists():
            db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(db_path, os.O_RDWR | os.O_CREAT, 0o600))
    except OSError as exc:
        raise storage_error(db_path, exc) from exc
    for path in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        restrict(path, 0o600)


def restrict(path: Path, mode: int) -> None:
    """Take away group and other access from a file of ours left wider by an older version or umask."""
    try:
        st = path.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o777 & ~mode:
            os.chmod(path, mode)
    except OSError:
        pass  # missing or not ours: nothing to tighten
