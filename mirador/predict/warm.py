"""`mirador preload --predict` and `mirador models --predict`: what this hour usually needs, from history."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from mirador.errors import MiradorError, ModelNotFound
from mirador.predict.predictor import Predictor
from mirador.predict.preload import (
    choose_preloads,
    free_memory_bytes,
    max_loaded_models,
    preloading_allowed,
    size_from_show,
)
from mirador.predict.usage import choose_warm, uses_from_history, with_memory

# A predicted preload lasts until the next hourly run would renew it.
PREDICTED_KEEP_ALIVE = "1h"


@dataclass(frozen=True)
class Prediction:
    model: str
    next_question: float  # the chance the next question needs it, if one comes now
    this_hour: float  # the chance it is needed soon: also weighs whether the user usually asks now
    loaded: bool


def predict(settings: Any, installed: list[str], at: float | None = None) -> list[Prediction]:
    """Every installed model's probabilities, most likely first (all 0 without a history)."""
    at = time.time() if at is None else at
    uses = with_memory(settings, uses_from_history(settings.paths.history_db))
    if not uses:
        return [Prediction(m, 0.0, 0.0, False) for m in installed]
    predictor = Predictor.fit(uses, installed)
    nxt = predictor.probabilities(at, installed)
    hour = predictor.needed_this_hour(at, installed)
    out = [Prediction(m, nxt[m], hour[m], False) for m in installed]
    return sorted(out, key=lambda p: (-p.this_hour, -p.next_question, p.model))


async def installed_and_loaded(client: Any) -> tuple[list[str], set[str]]:
    installed, running = await asyncio.gather(client.tags(), client.ps())
    return [_name(m) for m in installed], {_name(m) for m in running}


async def warm_predicted(client: Any, settings: Any, keep_alive_for: Any,
                         profile: str | None = None) -> tuple[list[Prediction], list[tuple[str, Any]], str]:
    """Load the models likely needed this hour: (predictions, [(model, result or error)], why not more)."""
    installed, loaded = await installed_and_loaded(client)
    predictions = [Prediction(p.model, p.next_question, p.this_hour, p.model in loaded)
                   for p in await asyncio.to_thread(predict, settings, installed)]
    if not preloading_allowed(settings, profile):
        return predictions, [], "preloading is off (the `preload` setting, or the survival energy profile)"
    likely = choose_warm({p.model: p.this_hour for p in predictions}, settings.preload_threshold,
                         max_loaded_models(settings))
    if not likely:
        return predictions, [], f"no model is above the threshold ({settings.preload_threshold:g})"
    sizes: dict[str, int] = {}
    for model in likely:
        try:
            sizes[model] = size_from_show(await client.show(model))
        except MiradorError:
            sizes[model] = 0
    choice = choose_preloads("", likely, loaded=loaded, sizes=sizes, free_bytes=free_memory_bytes(),
                             max_loaded=max_loaded_models(settings))
    results: list[tuple[str, Any]] = [(m, {"done_reason": "already loaded"}) for m in likely if m in loaded]
    for model in choice.load:
        try:
            results.append((model, await client.preload(model, keep_alive_for(model, PREDICTED_KEEP_ALIVE))))
        except ModelNotFound as exc:  # deleted since /api/tags answered
            results.append((model, exc))
    skipped = "; ".join(f"{m}: {why}" for m, why in choice.skipped.items() if why != "already loaded")
    return predictions, results, skipped


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model") or "")
