"""Speculative first stages: when the router is unsure, the competing interpretations start together.

Up to three first stages stream in parallel, each on its own model (one model
serves one request at a time, NUM_PARALLEL=1: a second request would only queue
behind the first, so a model is never speculated on twice). When the refined
decision arrives, the winner's stream goes on from what it already buffered and
the losers are cancelled: their HTTP streams close, which makes the server stop
generating. What the losers produced is the cost: wasted tokens, the time they
ran and an estimate of their energy, for history. Off in survival and on
battery below a threshold.

`mirador ask` uses it through `Speculation` (start, `settle` on the decision)
and `AdoptingClient`, which hands the winner's stream to the chain executor as
if stage 1 had asked for it then: the executor does not know it speculated.
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
    wasted_seconds: float = 0.0  # how long the losers' streams ran (request to cancel or end), summed
    cancelled: list[str] = field(default_factory=list)
    finished_before_cancel: list[str] = field(default_factory=list)
    streamed: dict[str, int] = field(default_factory=dict)  # tokens so far, by model, while they run
    decide_s: float | None = None  # from the start of the streams to the decision

    def energy_j(self, active_watts: float) -> float:
        """A rough figure from time alone; `ask` uses mirador.energy's per-model cost instead."""
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


def speculation_blocker(margin: float, settings: Any = None, profile: str | None = None) -> str | None:
    """Why not to speculate (None: go ahead): a clear margin, the survival profile, a low battery."""
    threshold = float(getattr(settings, "speculate_margin", DEFAULT_MARGIN) or DEFAULT_MARGIN)
    if margin >= threshold:
        return f"the margin {margin:.2f} is not below {threshold:.2f}: the router is sure enough"
    from mirador.energy.profiles import decide_profile

    try:
        decision = decide_profile(profile, settings)
    except MiradorError as exc:
        return f"the energy profile could not be decided ({exc.message})"
    if decision.profile == "survival":
        return "the survival profile never speculates"
    state = decision.state
    if state is None:
        from mirador.energy.sensors import read_power_state

        state = read_power_state()
    below = float(getattr(settings, "speculate_battery_below", DEFAULT_BATTERY_BELOW) or DEFAULT_BATTERY_BELOW)
    if not state.plugged and state.battery_percent is not None and state.battery_percent < below:
        return f"on battery at {state.battery_percent:.0f}%, below {below:.0f}%"
    return None


def should_speculate(margin: float, settings: Any = None, profile: str | None = None) -> bool:
    """Only when the top interpretations are close, never in survival or on a low battery."""
    return speculation_blocker(margin, settings, profile) is None


class _Runner:
    """One speculative stream, read into a queue so that the winner loses nothing it already sent."""

    def __init__(self, client: Any, candidate: Candidate, cost: SpeculationCost):
        self.candidate = candidate
        self.cost = cost
        self.queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        self.tokens = 0
        self.sent_at = time.perf_counter()
        self.first_at: float | None = None
        self.ended_at: float | None = None
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
            self.ended_at = time.perf_counter()
            self.queue.put_nowait(None)

    async def cancel(self) -> None:
        # Cancelling the task closes the generator and its HTTP response: the server stops.
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, MiradorError):
            await self.task

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """What it buffered, then the rest as it arrives; closing this early cancels the stream."""
        try:
            while True:
                item = await self.queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            await self.cancel()


class Speculation:
    """The candidates' first stages, streaming together until `settle` names the winner."""

    def __init__(self, client: Any, candidates: list[Candidate], cost: SpeculationCost | None = None):
        self.cost = cost if cost is not None else SpeculationCost()
        self.started = time.perf_counter()
        self.runners = {c.model: _Runner(client, c, self.cost) for c in distinct(candidates)}
        self.winner: _Runner | None = None
        self.outcomes: dict[str, str] = {}  # model -> "winner" | "cancelled" | "finished"

    async def settle(self, chosen: str) -> _Runner:
        """Keep `chosen`'s stream, cancel the others; a loser that already finished is no error."""
        winner = self.runners.get(chosen)
        decided = time.perf_counter()
        self.cost.decide_s = decided - self.started
        for model, runner in self.runners.items():
            if runner is winner:
                continue
            if runner.done:
                self.cost.finished_before_cancel.append(model)  # nothing to close: not an error
                self.outcomes[model] = "finished"
            else:
                self.cost.cancelled.append(model)
                self.outcomes[model] = "cancelled"
            await runner.cancel()
            self.cost.wasted_tokens += runner.tokens
            self.cost.wasted_seconds += max(0.0, (runner.ended_at or time.perf_counter()) - runner.sent_at)
        if winner is None:
            raise MiradorError(f"the decision chose {chosen}, which was not among the speculated models",
                               hint="speculate only on the router's top interpretations")
        self.winner = winner
        self.outcomes[chosen] = "winner"
        return winner

    async def aclose(self) -> None:
        """Cancel every stream still open (Ctrl-C, a failure before the decision, or the end)."""
        for runner in self.runners.values():
            await runner.cancel()


class AdoptingClient:
    """The ask's client, except that stage 1's request for the winner's model is answered from the
    winner's speculative stream (already running, tokens buffered) instead of a new request."""

    def __init__(self, client: Any, winner: _Runner):
        self._client = client
        self._winner: _Runner | None = winner
        self.adopted_at: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def chat(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        winner, self._winner = self._winner, None
        if winner is not None and winner.candidate.model == model and winner.candidate.messages == messages:
            self.adopted_at = time.perf_counter()
            return winner.chunks()
        if winner is not None:  # not the request it speculated on: close it, ask for real
            winner.task.cancel()
        return self._client.chat(model, messages, **kwargs)


async def speculate(client: Any, candidates: list[Candidate], decide: Awaitable[str],
                    cost: SpeculationCost | None = None) -> AsyncIterator[dict[str, Any]]:
    """Stream the chosen candidate's chunks; `decide` yields the chosen model (a candidate's)."""
    speculation = Speculation(client, candidates, cost)
    try:
        winner = await speculation.settle(await decide)
        async for chunk in winner.chunks():
            yield chunk
    finally:
        await speculation.aclose()


async def decide_after(seconds: float, model: str) -> str:
    """A decision that arrives after a delay (tests, the benchmark)."""
    await asyncio.sleep(seconds)
    return model
