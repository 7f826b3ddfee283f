"""Prefix warm-up: a later stage's model reads the start of its prompt before its stage begins.

Once its model is loaded, a later stage's time to first token is mostly prompt
reading: the system prompt, the question and the earlier stages' drafts
(stream/chain.py puts the drafts after the fixed part). Ollama and the embedded
runtime both keep a model's KV cache between requests and reuse the longest
common token prefix of the next one. So while stage j streams, stage j+1's
model (idle, already preloaded) is sent stage j+1's own messages with the
drafts so far and `num_predict: 1`: it reads them now, beside stage j, and
when stage j+1 really starts only the last few tokens are left to read.

The prompt grows as stage j streams, so the warm-up is refreshed every
REFRESH_TOKENS tokens; each refresh reads only what is new (the cache holds the
rest). Rules, because a model answers one request at a time (NUM_PARALLEL=1)
and a CPU has few cores: one warm-up at a time (a stage decodes, or reads its
prompt, beside at most one other prompt read); nothing beside stage 1 before its
first token (it comes first); stage j+1 comes first: only when its warm-up is up
to date (sent less than REFRESH_TOKENS tokens ago and finished) does the idle
slot go to stage j+2, then j+3... with the same fixed part (system prompt,
question, the drafts so far) behind their own system prompt, refreshed every
FAR_REFRESH_TOKENS; such a farther warm-up is cancelled as soon as stage j+1
falls behind (the batches it read stay cached: it resumes where it stopped).
While stage j (j >= 2) reads its own prompt, mostly warmed already, the slot
warms stage j+1 with the finished drafts: on a slow CPU stage j+1's warm-ups
cannot keep up with stage j's text otherwise. A model that is streaming a
stage is never warmed, and the warm-up in flight when a stage starts is
cancelled (its stream closed: the server stops between prompt batches; a
farther stage's is sent again with the finished draft).
Separate models keep separate KV caches (the embedded runtime gives each loaded
model its own llama.cpp context), so warming stage j+2's model leaves stage
j+1's cache alone; two stages on one model: only the nearer one is warmed.
Every warm-up's messages are a prefix of what the stage will send
(stream/chain.py puts the drafts in stage order after the fixed part), so even
a warm-up the stage has to wait for reads nothing the stage would not read
itself but the template's last few tokens. A model no longer loaded is not
warmed (that would reload it behind the preloader's memory checks), and a
failed warm-up is dropped silently: the stage reads its prompt itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mirador.errors import MiradorError
from mirador.stream.chain import stage_messages, stage_options
from mirador.stream.events import Stage, StageFailed, StageFinished, StageStarted, TokenEvent

# Tokens of the streaming stage between two warm-ups of the next stage: each warm-up also
# re-reads the template's tail (end of turn, assistant header: ~5 tokens) and costs a round trip.
REFRESH_TOKENS = 8
# The same for the stages after the next one: what they miss now, they still read while the
# stage before them streams (then they are the next stage), so fewer, longer refreshes suffice.
FAR_REFRESH_TOKENS = 2 * REFRESH_TOKENS


@dataclass
class WarmUp:
    """One warm-up request, for the bench and tests."""

    model: str
    stage: int  # 1-based number of the stage it prepares
    drafts: int  # finished drafts it included
    tokens: int  # tokens of the streaming stage's partial draft it included
    during: int = 0  # the stage streaming when it was sent
    final: dict[str, Any] = field(default_factory=dict)  # the server's last chunk (its stats)
    cancelled: bool = False


class PrefixWarmer:
    """Fed with the chain's events (`observe`); warms the later stages' models that `ready` says are loaded."""

    def __init__(self, client: Any, request: Any, ready: Callable[[str], bool]):
        self.client = client
        self.request = request  # the ChainRequest: its stages may be re-planned while stage 1 streams
        self.ready = ready
        self.sent: list[WarmUp] = []
        self._current = 0  # the stage streaming now (1-based); 0 before stage 1
        self._earlier: list[tuple[Stage, str]] = []  # finished stages, as run_chain keeps them
        self._parts: list[str] = []  # the streaming stage's text so far
        self._last: dict[int, tuple[int, int]] = {}  # stage -> (drafts, tokens) at its last warm-up
        self._inflight: dict[str, tuple[int, asyncio.Task[None]]] = {}  # model -> (stage, task)
        self._failed: set[str] = set()
        self._closed = False

    # -- events ----------------------------------------------------------------------------------

    def observe(self, event: Any) -> None:
        """Called for every event of the chain, on its loop; cheap for a token (a list append)."""
        if isinstance(event, TokenEvent):
            self._parts.append(event.token)
        elif isinstance(event, StageStarted):
            self._current = event.stage
            self._parts = []
            # The stage's own warm-up must not hold its request; a farther one is sent again (when
            # it ends) with the finished draft instead of a part of it.
            for _, task in self._inflight.values():
                _cancel(task)
        elif isinstance(event, StageFinished):
            stages = self.request.stages
            if 0 < event.stage <= len(stages):
                self._earlier.append((stages[event.stage - 1], event.text))
            self._parts = []
        elif isinstance(event, StageFailed):
            self._parts = []  # run_chain drops a failed stage's text from the later prompts
        else:
            return
        self.pump()

    def pump(self) -> None:
        """Send the most urgent warm-up that is due: the next stage's (its first, then every
        REFRESH_TOKENS tokens of the streaming stage), else a later stage's. Called on events and
        when a preload or a warm-up completes."""
        if self._closed or self._current < 1 or (self._current == 1 and not self._parts):
            return  # nothing beside stage 1 before its first token (later stages: see the docstring)
        stages = list(self.request.stages)
        due = self._due(stages)
        if self._inflight:
            # One at a time. A later stage's warm-up yields to the next stage's refresh: cancelled
            # here, its stream's end (_done) pumps again and the next stage goes first.
            number, task = next(iter(self._inflight.values()))
            if due and due[0] == self._current + 1 < number:
                _cancel(task)
            return
        if not due:
            return
        context = self._context()
        if context is False:
            return  # the compiled context is not ready: the system prompt is not known yet
        self._send(due[0], stages[due[0] - 1], (len(self._earlier), len(self._parts)), context)

    def _due(self, stages: list[Stage]) -> list[int]:
        """The later stages whose warm-up is due now, nearest first."""
        busy = stages[self._current - 1].model if 0 < self._current <= len(stages) else None
        state = (len(self._earlier), len(self._parts))
        due: list[int] = []
        seen: set[str] = set()
        for number in range(max(2, self._current + 1), len(stages) + 1):
            model = stages[number - 1].model
            if model in seen:
                continue  # the nearest stage on this model is the one to prepare (one KV cache each)
            seen.add(model)
            if model == busy or model in self._failed or not self.ready(model):
                continue
            last = self._last.get(number)
            step = REFRESH_TOKENS if number == self._current + 1 else FAR_REFRESH_TOKENS
            if last is None or last[0] != state[0] or state[1] - last[1] >= step:
                due.append(number)
        return due

    # -- requests --------------------------------------------------------------------------------

    def _context(self) -> str | None | bool:
        """The compiled context stages 2..n get (None: raw history), or False while it compiles."""
        if self.request.context is None:
            return None
        task = getattr(self.request, "compiled", None)
        if task is None or not task.done():
            return False
        if task.cancelled() or task.exception() is not None:
            return None  # run_chain falls back to the raw history then
        return task.result()

    def _send(self, number: int, stage: Stage, state: tuple[int, int], context: str | None) -> None:
        earlier = list(self._earlier)
        partial = "".join(self._parts)
        if partial.strip() and 0 < self._current <= len(self.request.stages):
            earlier.append((self.request.stages[self._current - 1], partial))
        messages = stage_messages(self.request, stage, earlier, context)
        options = {**stage_options(self.request, stage), "num_predict": 1}
        record = WarmUp(stage.model, number, state[0], state[1], self._current)
        self.sent.append(record)
        self._last[number] = state
        task = asyncio.create_task(self._warm(record, messages, options))
        self._inflight[stage.model] = (number, task)
        task.add_done_callback(lambda t: self._done(stage.model, t, record, state))

    async def _warm(self, record: WarmUp, messages: list[dict[str, Any]], options: dict[str, Any]) -> None:
        try:
            # Only a model still loaded: one the server let go (memory pressure, another client) is
            # left to its stage's normal load, never reloaded behind the preloader's memory checks.
            if record.model not in {str(m.get("name") or m.get("model")) for m in await self.client.ps()}:
                self._failed.add(record.model)
                record.cancelled = True
                return
            async for chunk in self.client.chat(record.model, messages, options=options,
                                                keep_alive=self.request.keep_alive(record.model)):
                if chunk.get("done"):
                    record.final = chunk
        except asyncio.CancelledError:
            record.cancelled = True
            raise
        except MiradorError:
            self._failed.add(record.model)  # the stage reads its whole prompt itself, and says what is wrong

    def _done(self, model: str, task: asyncio.Task[None], record: WarmUp, state: tuple[int, int]) -> None:
        if self._inflight.get(model, (0, None))[1] is task:
            del self._inflight[model]
        record.cancelled = record.cancelled or task.cancelled()  # also one cancelled before it ran
        if record.cancelled and self._last.get(record.stage) == state:
            del self._last[record.stage]  # cut short: due again (what it read stays cached)
        if not task.cancelled():
            task.exception()  # retrieved: a warm-up's failure is never logged as unhandled
        self.pump()

    async def aclose(self) -> None:
        self._closed = True
        tasks = [task for _, task in self._inflight.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _cancel(task: asyncio.Task[None]) -> None:
    """Once: a second cancel could cut short the stream's own closing."""
    if not task.cancelling():
        task.cancel()
