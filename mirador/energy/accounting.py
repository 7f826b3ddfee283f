"""The energy of every answer: estimated for each stage, measured where a sensor allows.

The estimate rests on the stage's own stats where the server gave them: power ×
decode time is that answer's measured tokens/s at work. Where it did not (a
stage cut short), tokens × the model's J/token. The measurement is RAPL's
package counter (or, on a discharging battery, its draw) read before and after
the whole answer, shared among the stages by their time. Both run after the
stream, beside the history write: nothing here delays the first token.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirador.energy.sensors import POWER_ENV, PowerSources, RaplSample, rapl_joules, read_power_state, read_rapl

if TYPE_CHECKING:
    from mirador.energy.costs import CostModel


@dataclass
class EnergyMeter:
    """Reads the sensors at the start and the end of an answer. Cheap when there are none: a
    directory listing and a few small files on Linux. Only the sensors module is imported
    before the answer streams; the cost model waits for the end."""

    rapl: RaplSample | None = None
    draw_w: float | None = None
    started: float = 0.0
    sysfs_root: Path | None = None

    @classmethod
    def start(cls, sysfs_root: Path | None = None) -> EnergyMeter:
        meter = cls(read_rapl(sysfs_root), None, time.monotonic(), sysfs_root)
        if meter.rapl is None:
            meter.draw_w = _battery_draw(sysfs_root)
        return meter

    def stop(self) -> tuple[float, str] | None:
        """(joules, "RAPL" or "battery") since start, or None when nothing could measure it."""
        if self.rapl is not None:
            after = read_rapl(self.sysfs_root)
            joules = rapl_joules(self.rapl, after) if after is not None else 0.0
            if joules > 0:  # a counter that did not move is not counting (a frozen or fake file)
                return joules, "RAPL"
        if self.draw_w is not None:
            end_draw = _battery_draw(self.sysfs_root)
            if end_draw is not None:
                # The mean of two readings: the battery's own figure is already averaged over seconds.
                return (self.draw_w + end_draw) / 2 * (time.monotonic() - self.started), "battery"
        return None


def _battery_draw(sysfs_root: Path | None) -> float | None:
    """The draw of a discharging battery (when plugged, the battery's figure is its charging power)."""
    if os.environ.get(POWER_ENV):
        return None  # a forced power state: the real sensors describe another situation
    try:
        state = read_power_state(PowerSources(sysfs_root=sysfs_root) if sysfs_root else None)
    except Exception:  # a sensor must never cost the user their answer
        return None
    return None if state.plugged else state.draw_w


def stage_estimate(stage: Any, costs: CostModel) -> tuple[float | None, str | None]:
    """(joules, basis) for one stage of a history record."""
    from mirador.energy.costs import PROMPT_TOKEN_SHARE

    cost = costs.cost(stage.model)
    tokens = stage.eval_count
    if tokens is None and stage.text:
        tokens = max(1, round(len(stage.text.split()) * 1.3))  # about 1.3 tokens a word in English
    if not tokens:
        return None, None
    prompt_j = PROMPT_TOKEN_SHARE * (stage.prompt_eval_count or 0) * cost.joules_per_token
    if stage.eval_ms and stage.eval_ms > 0 and stage.eval_count:
        basis = "measured power" if cost.source == "measured power" else "measured tokens/s"
        return cost.power_w * stage.eval_ms / 1000 + prompt_j, basis
    return tokens * cost.joules_per_token + prompt_j, cost.source


def annotate(record: Any, costs: CostModel, measured: tuple[float, str] | None = None) -> None:
    """Fill energy_j/energy_basis (and the measured share) of every stage of an ExchangeRecord."""
    for stage in record.stages:
        stage.energy_j, stage.energy_basis = stage_estimate(stage, costs)
    if measured is None or not record.stages:
        return
    joules, by = measured
    times = [max(stage.total_ms or 0.0, 0.0) for stage in record.stages]
    total = sum(times)
    for stage, spent in zip(record.stages, times, strict=True):
        share = spent / total if total > 0 else 1 / len(record.stages)
        stage.measured_energy_j, stage.measured_by = joules * share, by


def account(record: Any, settings: Any, meter: EnergyMeter | None = None) -> None:
    """Estimate (and measure) the record's energy, and fold its speeds into energy.json.

    Never raises: the answer was shown already, and its history row matters more than its joules.
    """
    from mirador.energy.costs import CostModel, Measurements, measurements_path

    try:
        path = measurements_path(settings.paths.data_dir)
        measurements = Measurements.load(path)
        costs = CostModel(measurements=measurements, active_w=float(getattr(settings, "energy_active_watts", 20.0)))
        annotate(record, costs, meter.stop() if meter is not None else None)
        for stage in record.stages:
            measurements.observe(stage.model, stage.tokens_per_s, stage.eval_count, stage.load_ms)
        # Parallel answers may each write: the last one wins, and the file is a cache of history.db.
        measurements.save(path)
    except Exception:  # noqa: BLE001 - see the docstring
        return
