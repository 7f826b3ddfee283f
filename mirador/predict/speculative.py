"""Speculative first stages: when the router is unsure, the competing interpretations start together.

Up to three first stages stream in parallel, each on its own model (one model
serves one request at a time, NUM_PARALLEL=1: a second request would only queue
behind the first, so a model is never speculated on twice). When the refined
decision arrives, the winner's stream goes on from what it already buffered and
the losers are cancelled: their HTTP streams close, which makes the server stop
generating. What the losers produced is the cost: wasted tokens and an estimate
of their energy, for history. Off in survival and on battery below a threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

from mirador.errors import MiradorError

MAX_SPECULATIONS = 3
# Below this margin between the router's top two interpretations, speculating pays.
DEFAULT_MARGIN = 0.15
DEFAULT_BATTERY_BELOW = 50.0


@dataclass(frozen=True)
class Candidate:
    model: str
    messages: list[dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    keep_alive: Any = "10m"


@dataclass
class SpeculationCost:
    """What the losing interpretations cost before they were cancelled."""

    wasted_tokens: int = 0
    wasted_seconds: float = 0.0  # decoding time of the losers, summed
    cancelled: list[str] = field(default_factory=list)
    finished_before_cancel: list[str] = field(default_factory=list)
    streamed: dict[str, int] = field(default_factory=dict)  # tokens so far, by model, while they run

    def energy_j(self, active_watts: float) -> float:
        return self.wasted_seconds * active_watts


def distinct(candidates: list[Candidate], limit: int = MAX_SPECULATIONS) -> list[Candidate]:
    """At most `limit` candidates, never two on one model (the second would only queue)."""
    seen: set[str] = set()
    out = []
    for candidate in candidates:
        if candidate.model not in seen:
            seen.add(candidate.model)
            out.append(candidate)
    return out[:limit]


def should_speculate(margin: float, settings: Any = None, profile: str | None = None) -> bool:
    """Only when the top interpretations are close, never in survival or on a low battery."""
    threshold = float(getattr(settings, "speculate_margin", DEFAULT_MARGIN) or DEFAULT_MARGIN)
    if margin >= threshold:
        return False
    from mirador.energy.profiles import decide_profile

    try:
        decision = decide_profile(profile, settings)
    except MiradorError:
        return False
    if decision.profile == "survival":
        return False
    state = decision.state
    if state is None:
        from mirador.energy.sensors import read_power_state

        state = read_power_state()
    below = float(getattr(settings, "speculate_battery_below", DEFAULT_BATTERY_BELOW) or DEFAULT_BATTERY_BELOW)
    return state.plugged or state.battery_percent is None or state.battery_percent >= below


class _Runner:
    """One speculative stream, read into a queue so that the winner loses nothing it already sent."""

    def __init__(self, client: Any, candidate: Candidate, cost: SpeculationCost):
        self.candidate = candidate
        self.cost = cost
        self.queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        self.tokens = 0
        self.first_at: float | None = None
        self.done = False
        self.task = asyncio.create_task(self._read(client))

    async def _read(self, client: Any) -> None:
        c = self.candidate
        try:
            async for chunk in client.chat(c.model, c.messages, keep_alive=c.keep_alive, options=c.options):
                if (chunk.get("message") or {}).get("content"):
                    self.tokens += 1
                    self.cost.streamed[self.candidate.model] = self.tokens
                    if self.first_at is None:
                        self.first_at = time.perf_counter()
                self.queue.put_nowait(chunk)
            self.done = True
        except MiradorError as exc:
            self.queue.put_nowait(exc)
        finally:
            self.queue.put_nowait(None)

    async def cancel(self) -> None:
        # Cancelling the task closes the generator and its HTTP response: the server stops.
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, MiradorError):
            await self.task


async def speculate(client: Any, candidates: list[Candidate], decide: Awaitable[str],
                    cost: SpeculationCost | None = None) -> AsyncIterator[dict[str, Any]]:
    """Stream the chosen candidate's chunks; `decide` yields the chosen model (a candidate's)."""
    cost = cost if cost is not None else SpeculationCost()
    runners = {c.model: _Runner(client, c, cost) for c in distinct(candidates)}
    started = time.perf_counter()
    try:
        chosen = await decide
    except BaseException:
        for runner in runners.values():
            await runner.cancel()
        raise
    winner = runners.get(chosen)
    decided = time.perf_counter()
    for model, runner in runners.items():
        if runner is winner:
            continue
        if runner.done:
            cost.finished_before_cancel.append(model)  # nothing to close: not an error
        else:
            cost.cancelled.append(model)
        await runner.cancel()
        cost.wasted_tokens += runner.tokens
        if runner.first_at is not None:
            cost.wasted_seconds += max(0.0, min(decided, time.perf_counter()) - max(started, runner.first_at))
    if winner is None:
        raise MiradorError(f"the decision chose {chosen}, which was not among the speculated models",
                           hint="speculate only on the router's top interpretations")
    try:
        while True:
            item = await winner.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        await winner.cancel()


async def decide_after(seconds: float, model: str) -> str:
    """A decision that arrives after a delay (tests, the benchmark)."""
    await asyncio.sleep(seconds)
    return model

