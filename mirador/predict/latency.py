"""`mirador history --latency`: how often each stage found its model warm, and what it waited.

Read from the stages table as it is: a stage whose server reported no (or a
negligible) load_duration found its model loaded when it started (a preload
hit); load_ms is what it waited for the load, ttft_ms its time to first token.
"""

from __future__ import annotations

import sqlite3
import statistics
from dataclasses import dataclass
from pathlib import Path

# Below this the server only checked that the model was there: it did not load it.
WARM_BELOW_MS = 50.0


@dataclass(frozen=True)
class StageLatency:
    stage: int  # 1-based position in the chain
    count: int
    hits: int  # the model was already loaded when the stage started
    median_wait_ms: float  # the load the stage waited for (0 when warm)
    median_ttft_ms: float | None
    median_ttft_hit_ms: float | None
    median_ttft_miss_ms: float | None

    @property
    def hit_rate(self) -> float:
        return self.hits / self.count if self.count else 0.0


def is_hit(load_ms: float | None) -> bool:
    return load_ms is None or load_ms < WARM_BELOW_MS


def latency_by_stage(db_path: Path, since: float | None = None) -> list[StageLatency]:
    if not db_path.exists():
        return []
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute(
            "SELECT s.idx, s.load_ms, s.ttft_ms FROM stages s JOIN exchanges e ON e.id = s.exchange_id "
            "WHERE s.error IS NULL AND e.created_at >= ?", (since or 0.0,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    by_stage: dict[int, list[tuple[float | None, float | None]]] = {}
    for idx, load_ms, ttft_ms in rows:
        by_stage.setdefault(int(idx) + 1, []).append((load_ms, ttft_ms))
    out = []
    for stage in sorted(by_stage):
        pairs = by_stage[stage]
        hits = [ttft for load, ttft in pairs if is_hit(load)]
        misses = [ttft for load, ttft in pairs if not is_hit(load)]
        out.append(StageLatency(
            stage, len(pairs), len(hits), statistics.median(load or 0.0 for load, _ in pairs),
            _median([t for _, t in pairs]), _median(hits), _median(misses)))
    return out


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None
