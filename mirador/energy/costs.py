"""What a model costs per token on this machine: joules per token ≈ active power / decode tokens/s.

Defaults come from size and quantization: local measurements put decoding at
about 0.12–0.15 J per billion parameters per token at Q4 on an M1 Pro drawing
around 20 W, and decoding reads every weight once per token, so the cost scales
with bytes per weight. What the machine measured replaces the defaults:
tokens/s from the stats Ollama returns with every answer, and power (hence
J/token) where `mirador energy calibrate` could read a sensor.

Measurements live in energy.json beside history.db: a small file the `ask`
path can read without opening SQLite. It is a cache: tokens/s can be rebuilt
from history.db at any time (`mirador energy` does); calibrations are its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirador.energy.models import Q4_BITS, ModelFacts, bits_per_weight

J_PER_BPARAM_TOKEN_Q4 = 0.135  # the middle of the published 0.12–0.15 J/B-params/token (M1 Pro, Q4)
DEFAULT_ACTIVE_W = 20.0  # the same measurements' active package power while decoding
UNKNOWN_PARAMS_B = 7.0  # a model whose size nothing tells: assume the most common local size
# The prompt is processed in parallel batches; per token it costs a small fraction of decoding.
PROMPT_TOKEN_SHARE = 0.1
MIN_TOKENS_FOR_RATE = 16  # shorter answers say more about latency than about decode speed
RATE_WINDOW = 50  # the newest answers per model a measured rate is the median of
MEASUREMENTS_FILE = "energy.json"


@dataclass(frozen=True)
class ModelCost:
    model: str
    params_b: float
    quantization: str | None
    tokens_per_s: float
    tokens_per_s_source: str  # "default", "measured (N answers)", "measured (calibrate)"
    power_w: float
    power_source: str  # "default", "config", "measured (RAPL)", "measured (battery)"
    joules_per_token: float
    load_ms: float | None = None
    params_source: str = "server"

    @property
    def source(self) -> str:
        """Where the J/token figure comes from, most trustworthy first."""
        if self.power_source.startswith("measured"):
            return "measured power"
        if self.tokens_per_s_source.startswith("measured"):
            return "measured tokens/s"
        return "default"

    def joules(self, tokens: float, prompt_tokens: float = 0.0) -> float:
        return (tokens + PROMPT_TOKEN_SHARE * prompt_tokens) * self.joules_per_token

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "params_b": round(self.params_b, 3), "quantization": self.quantization,
                "tokens_per_s": round(self.tokens_per_s, 2), "tokens_per_s_source": self.tokens_per_s_source,
                "power_w": round(self.power_w, 2), "power_source": self.power_source,
                "joules_per_token": round(self.joules_per_token, 4), "source": self.source,
                "load_ms": self.load_ms, "params_source": self.params_source}


def default_joules_per_token(params_b: float, quantization: str | None) -> float:
    return J_PER_BPARAM_TOKEN_Q4 * params_b * bits_per_weight(quantization) / Q4_BITS


@dataclass
class Measurements:
    """energy.json: per-model decode rates seen in answers, calibration results, and model sizes."""

    rates: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> {tokens_per_s, samples, load_ms}
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> {params_b, quantization}

    @classmethod
    def load(cls, path: Path) -> Measurements:
        """A missing or damaged file is an empty one: it is a cache, and the ask path must not fail on it."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        parts = [data.get(key) if isinstance(data.get(key), dict) else {}
                 for key in ("rates", "calibration", "facts")]
        return cls(*({k: v for k, v in part.items() if isinstance(v, dict)} for part in parts))

    def save(self, path: Path) -> None:
        from mirador.yamlfile import write_private_atomically

        data = {"version": 1, "rates": self.rates, "calibration": self.calibration, "facts": self.facts}
        write_private_atomically(path, json.dumps(data, indent=1, sort_keys=True) + "\n")

    def remember_facts(self, facts: ModelFacts) -> None:
        if facts.params_source in ("server", "file size") and facts.params_b:
            self.facts[facts.name] = {"params_b": facts.params_b, "quantization": facts.quantization,
                                      "source": facts.params_source}

    def rebuild_rates(self, samples: dict[str, list[tuple[float, float | None]]]) -> None:
        """Rates from history: model -> [(tokens/s, load_ms)], newest first."""
        import statistics  # 9 ms of import: only `mirador energy` rebuilds, never `ask`
        self.rates = {}
        for model, rows in samples.items():
            speeds = [tps for tps, _ in rows[:RATE_WINDOW] if tps and tps > 0]
            loads = [ms for _, ms in rows[:RATE_WINDOW] if ms and ms > 50]  # a warm model reports ~0
            if speeds:
                self.rates[model] = {"tokens_per_s": statistics.median(speeds), "samples": len(speeds),
                                     "load_ms": statistics.median(loads) if loads else None,
                                     "updated": time.time()}

    def observe(self, model: str, tokens_per_s: float | None, eval_count: int | None,
                load_ms: float | None) -> None:
        """Fold one answer's stats in: a running mean over about the last RATE_WINDOW answers."""
        if not tokens_per_s or tokens_per_s <= 0 or (eval_count or 0) < MIN_TOKENS_FOR_RATE:
            return
        entry = self.rates.setdefault(model, {"tokens_per_s": tokens_per_s, "samples": 0, "load_ms": None})
        n = min(int(entry.get("samples") or 0), RATE_WINDOW - 1)
        entry["tokens_per_s"] = (float(entry.get("tokens_per_s") or tokens_per_s) * n + tokens_per_s) / (n + 1)
        entry["samples"] = int(entry.get("samples") or 0) + 1
        if load_ms and load_ms > 50:
            old = entry.get("load_ms")
            entry["load_ms"] = load_ms if not old else (float(old) * 0.8 + load_ms * 0.2)
        entry["updated"] = time.time()


def measurements_path(data_dir: Path | None = None) -> Path:
    if data_dir is None:
        from mirador.config import paths

        data_dir = paths().data_dir
    return data_dir / MEASUREMENTS_FILE


class CostModel:
    """Per-model costs: the defaults, refined by whatever this machine measured."""

    def __init__(self, facts: dict[str, ModelFacts] | None = None, measurements: Measurements | None = None,
                 active_w: float = DEFAULT_ACTIVE_W, active_w_source: str = "default"):
        self.facts = dict(facts or {})
        self.measurements = measurements or Measurements()
        self.active_w = active_w
        self.active_w_source = active_w_source
        self._costs: dict[str, ModelCost] = {}

    @classmethod
    def load(cls, facts: list[ModelFacts] | None = None, settings: Any = None,
             measurements: Measurements | None = None) -> CostModel:
        """The cost model of this machine: energy.json (or `measurements`) plus the models the caller knows of."""
        data_dir = settings.paths.data_dir if settings is not None else None
        measured = measurements or Measurements.load(measurements_path(data_dir))
        active_w = getattr(settings, "energy_active_watts", None) if settings is not None else None
        source = "default"
        if active_w is None:
            active_w = DEFAULT_ACTIVE_W
        elif getattr(settings, "sources", {}).get("energy_active_watts", "default") != "default":
            source = "config"
        return cls({f.name: f for f in facts or []}, measured, float(active_w), source)

    def add_facts(self, facts: list[ModelFacts]) -> None:
        """What the caller learnt of the models since (the installed list arrives after the profile)."""
        self.facts.update({f.name: f for f in facts if f.params_b})
        self._costs.clear()

    def facts_for(self, model: str) -> ModelFacts:
        if model in self.facts:
            return self.facts[model]
        stored = self.measurements.facts.get(model)
        if stored and isinstance(stored.get("params_b"), (int, float)):
            return ModelFacts(model, float(stored["params_b"]), stored.get("quantization"), None,
                              str(stored.get("source") or "server"))
        return ModelFacts.from_name(model)

    def cost(self, model: str) -> ModelCost:
        if model not in self._costs:
            self._costs[model] = self._estimate(model)
        return self._costs[model]

    def joules(self, model: str, tokens: float, prompt_tokens: float = 0.0) -> float:
        return self.cost(model).joules(tokens, prompt_tokens)

    def _estimate(self, model: str) -> ModelCost:
        facts = self.facts_for(model)
        params = facts.params_b if facts.params_b else UNKNOWN_PARAMS_B
        params_source = facts.params_source if facts.params_b else "unknown (assumed 7B)"
        j_default = default_joules_per_token(params, facts.quantization)
        power, power_source = self.active_w, self.active_w_source
        tps, tps_source = power / j_default, "default"
        load_ms = None
        calibrated = self.measurements.calibration.get(model) or {}
        rate = self.measurements.rates.get(model) or {}
        if _positive(rate.get("tokens_per_s")) and int(rate.get("samples") or 0) >= 3:
            tps, tps_source = float(rate["tokens_per_s"]), f"measured ({int(rate['samples'])} answers)"
            load_ms = _positive(rate.get("load_ms"))
        elif _positive(calibrated.get("tokens_per_s")):
            tps, tps_source = float(calibrated["tokens_per_s"]), "measured (calibrate)"
        if _positive(calibrated.get("load_ms")):
            load_ms = float(calibrated["load_ms"])
        measured_j = _positive(calibrated.get("joules_per_token"))
        if measured_j and _positive(calibrated.get("tokens_per_s")):
            # Power is a property of the machine running this model; J/token then follows today's speed.
            power = measured_j * float(calibrated["tokens_per_s"])
            power_source = f"measured ({calibrated.get('power_source') or 'sensor'})"
        joules_per_token = power / tps
        return ModelCost(model, params, facts.quantization, tps, tps_source, power, power_source,
                         joules_per_token, load_ms, params_source)


def _positive(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None
