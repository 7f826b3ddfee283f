"""`mirador energy calibrate`: a short fixed prompt on each model, to measure what it costs here.

Each model answers twice: the first run loads it if it was not loaded (its
load time), the second, warm, gives decode tokens/s from the server's own
eval stats and, where RAPL or a discharging battery can be read, the energy
per token. Package energy includes the machine's idle draw: that is what the
battery pays, so it stays in.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from mirador.energy.accounting import EnergyMeter

PROMPT = "Count from one to forty in English words, separated by commas, and nothing else."
MAX_TOKENS = 96


@dataclass
class Calibration:
    model: str
    tokens_per_s: float | None
    load_ms: float | None  # None: the model was loaded already, so no load was seen
    eval_count: int
    joules_per_token: float | None
    power_w: float | None
    power_source: str | None  # "RAPL", "battery", or None when nothing measured it
    at: float
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _run_once(client: Any, model: str, keep_alive: Any) -> dict[str, Any]:
    final: dict[str, Any] = {}
    messages = [{"role": "user", "content": PROMPT}]
    async for chunk in client.chat(model, messages, keep_alive=keep_alive,
                                   options={"num_predict": MAX_TOKENS, "temperature": 0}):
        if chunk.get("done"):
            final = chunk
    return final


async def calibrate_model(client: Any, model: str, keep_alive: Any = "5m") -> Calibration:
    from mirador.errors import MiradorError

    try:
        first = await _run_once(client, model, keep_alive)
        meter = EnergyMeter.start()
        started = time.monotonic()
        warm = await _run_once(client, model, keep_alive)
        measured = meter.stop()
        wall = time.monotonic() - started
    except MiradorError as exc:
        return Calibration(model, None, None, 0, None, None, None, time.time(), error=exc.message)
    load_ns = first.get("load_duration") or 0
    load_ms = load_ns / 1e6 if load_ns / 1e6 > 50 else None  # a warm model reports a few ms at most
    count = int(warm.get("eval_count") or 0)
    eval_ns = warm.get("eval_duration") or 0
    tps = count / eval_ns * 1e9 if count and eval_ns else None
    joules_per_token = power = source = None
    if measured is not None and count and wall > 0:
        joules, source = measured
        joules_per_token = joules / count
        power = joules / wall
    return Calibration(model, tps, load_ms, count, joules_per_token, power, source, time.time())


def store(results: list[Calibration], settings: Any, facts: list[Any]) -> None:
    """Keep the results (and the models' sizes) in energy.json; a failed model keeps its old figures."""
    from mirador.energy.costs import Measurements, measurements_path

    path = measurements_path(settings.paths.data_dir)
    measurements = Measurements.load(path)
    for fact in facts:
        measurements.remember_facts(fact)
    for result in results:
        if result.error is None and result.tokens_per_s:
            entry = {k: v for k, v in result.to_dict().items() if k not in ("model", "error")}
            if entry["load_ms"] is None:  # loaded already: keep the load time measured before
                entry["load_ms"] = measurements.calibration.get(result.model, {}).get("load_ms")
            measurements.calibration[result.model] = entry
    settings.paths.ensure_data_dir()
    measurements.save(path)
