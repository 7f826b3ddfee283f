"""History: every question, the stages of the chain that answered it, their timings, ratings and speculation.

history.db is the source of truth (the memory index is rebuilt from it). The
package splits it by job: records.py (what is stored), schema.py (the schema,
its migrations, locking and retries), store.py (HistoryStore: reads and
writes). `from mirador.history import HistoryStore, ExchangeRecord, …` is the
public interface. Only sqlite3 is imported: `ask` loads it after the answer.
"""

from __future__ import annotations

from mirador.history.records import (
    EnergyTotal,
    ExchangeRecord,
    ExchangeSummary,
    RatingRecord,
    SpeculationCandidate,
    SpeculationRecord,
    StageRecord,
    StoredExchange,
)
from mirador.history.schema import BUSY_TIMEOUT_MS, LOCK_PATIENCE_S, MIGRATIONS, SCHEMA_VERSION
from mirador.history.schema import SCHEMA_V1 as _SCHEMA_V1  # noqa: F401 - older tests build a v1 file with it
from mirador.history.store import PREVIEW_CHARS, HistoryStore, fts_query

__all__ = [
    "BUSY_TIMEOUT_MS", "LOCK_PATIENCE_S", "MIGRATIONS", "PREVIEW_CHARS", "SCHEMA_VERSION", "EnergyTotal",
    "ExchangeRecord", "ExchangeSummary", "HistoryStore", "RatingRecord", "SpeculationCandidate",
    "SpeculationRecord", "StageRecord", "StoredExchange", "fts_query",
]
