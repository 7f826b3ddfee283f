"""Preload hits and waits per stage: recorded by `ask`, summarised by `mirador history --latency`.

A stage is a preload hit when its model was already loaded when the stage
started. `ask` records it (history schema 3, `StageObserver`): the server
reported no load for the stage's request, and no preload of that model was
still on its way when the stage began (a stage that queued behind its model's
preload found it loading, not loaded). Its wait is what the request spent on
the server before the model began reading the prompt: queue plus load.
Rows written before schema 3 have neither: their hit is derived from load_ms
(a negligible load_duration means the model was there) and their wait is load_ms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# sqlite3 and statistics are imported where they are used: `ask` imports StageObserver from here.

# Below this the server only checked that the model was there: it did not load it.
WARM_BELOW_MS = 50.0


@dataclass(frozen=True)
class StageLatency:
    stage: int  # 1-based position in the chain
    count: int
    hits: int  # the model was already loaded when the stage started
    median_wait_ms: float  # queue + load before the model began answering (0 when warm and free)
    median_ttft_ms: float | None
    median_ttft_hit_ms: float | None
    median_ttft_miss_ms: float | None
    recorded: int = 0  # rows with a recorded preload_hit (the rest derived from load_ms)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.count if self.count else 0.0


def is_hit(load_ms: float | None) -> bool:
    return load_ms is None or load_ms < WARM_BELOW_MS


class StageObserver:
    """Watches one ask's stages start, then fills preload_hit of its history record."""

    def __init__(self) -> None:
        self._pending: dict[int, bool] = {}  # stage number -> a preload of its model was still loading

    def started(self, stage: int, model: str, preloader: Any) -> None:
        requested = getattr(preloader, "requested", None) or set()
        loaded = getattr(preloader, "loaded", None) or set()
        self._pending[stage] = model in requested and model not in loaded

    def annotate(self, record: Any) -> None:
        for stage in record.stages:
            if stage.total_ms is None:  # failed or interrupted: the server said nothing about its load
                continue
            stage.preload_hit = is_hit(stage.load_ms) and not self._pending.get(stage.index + 1, False)


def latency_by_stage(db_path: Path, since: float | None = None) -> list[StageLatency]:
    import sqlite3
    import statistics

    if not db_path.exists():
        return []
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(stages)")}
        recorded = "s.preload_hit, s.wait_ms" if {"preload_hit", "wait_ms"} <= columns else "NULL, NULL"
        rows = conn.execute(
            f"SELECT s.idx, s.load_ms, s.ttft_ms, {recorded} FROM stages s JOIN exchanges e ON e.id = s.exchange_id "
            "WHERE s.error IS NULL AND e.created_at >= ?", (since or 0.0,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    by_stage: dict[int, list[tuple[bool, float, float | None, bool]]] = {}
    for idx, load_ms, ttft_ms, hit, wait_ms in rows:
        # Recorded where ask wrote it (schema 3), derived from load_ms for older rows.
        known = hit is not None
        by_stage.setdefault(int(idx) + 1, []).append((
            bool(hit) if known else is_hit(load_ms),
            float(wait_ms) if wait_ms is not None else float(load_ms or 0.0), ttft_ms, known))
    out = []
    for stage in sorted(by_stage):
        entries = by_stage[stage]
        hits = [ttft for hit, _, ttft, _ in entries if hit]
        misses = [ttft for hit, _, ttft, _ in entries if not hit]
        out.append(StageLatency(
            stage, len(entries), len(hits), statistics.median(wait for _, wait, _, _ in entries),
            _median([t for _, _, t, _ in entries]), _median(hits), _median(misses),
            sum(1 for *_, known in entries if known)))
    return out


def _median(values: list[float | None]) -> float | None:
    import statistics

    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


@dataclass(frozen=True)
class SpeculationTotals:
    exchanges: int  # answers whose first stage was speculated
    wasted_tokens: int
    wasted_seconds: float
    wasted_energy_j: float


def speculation_totals(db_path: Path, since: float | None = None) -> SpeculationTotals | None:
    """What speculation cost over the period; None when history has no speculation table (schema < 3)."""
    import sqlite3

    if not db_path.exists():
        return None
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(p.wasted_tokens), 0), coalesce(sum(p.wasted_seconds), 0),"
            " coalesce(sum(p.wasted_energy_j), 0) FROM speculations p JOIN exchanges e ON e.id = p.exchange_id"
            " WHERE e.created_at >= ?", (since or 0.0,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return SpeculationTotals(int(row[0]), int(row[1]), float(row[2]), float(row[3]))
