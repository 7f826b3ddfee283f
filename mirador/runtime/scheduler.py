"""Which models are in memory, for how long, and whose turn it is to use each one.

Mirrors Ollama's scheduler (server/sched.go) as OLLAMA_API.md describes it:
one request at a time per model (OLLAMA_NUM_PARALLEL=1) in FIFO order, at most
`max_loaded` models in memory with the least recently used idle one evicted to
make room, requests waiting when every loaded model is busy, a bounded queue
(503 past it), and keep_alive timers that unload idle models.

Every change to a model's state happens while holding that model's *turn*
(the FIFO slot a request waits for), and unloads run as tasks of their own, so
a request cancelled by a client disconnect can never leave a model half-loaded
or its turn held.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field

from mirador.runtime.engines.base import Engine, LoadedModel, ModelInfo, full_name

FOREVER = math.inf
DEFAULT_KEEP_ALIVE = 300.0  # Ollama's OLLAMA_KEEP_ALIVE default: 5 minutes
# Go's longest time.Duration (about 292 years): what Ollama reports as "forever".
FOREVER_SECONDS = (2**63 - 1) / 1e9


class ServeError(Exception):
    """A request the server answers with an HTTP error status and {"error": message}."""

    status = 500

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ServeError):
    status = 400


class UnknownModel(ServeError):
    status = 404

    def __init__(self, name: str):
        super().__init__(f"model '{name}' not found")


class ServerBusy(ServeError):
    status = 503

    def __init__(self) -> None:
        super().__init__("server busy, please try again.  maximum pending requests exceeded")


class ShuttingDown(ServeError):
    status = 503

    def __init__(self) -> None:
        super().__init__("server is shutting down")


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_PART = re.compile(r"(\d+\.?\d*|\.\d+)([^\d.]*)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("10m", "-1m", "1h30m", "0"), with Go's error messages."""
    body = text
    sign = 1.0
    if body[:1] in "+-" and body:
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise BadRequest(f'time: invalid duration "{text}"')
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _GO_PART.match(body, pos)
        if not match:
            raise BadRequest(f'time: invalid duration "{text}"')
        number, unit = match.groups()
        if not unit:
            raise BadRequest(f'time: missing unit in duration "{text}"')
        if unit not in _GO_UNITS:
            raise BadRequest(f'time: unknown unit "{unit}" in duration "{text}"')
        total += float(number) * _GO_UNITS[unit]
        pos = match.end()
    return sign * total


def parse_keep_alive(value: object) -> float | None:
    """keep_alive as Ollama reads it: None if absent, seconds otherwise, FOREVER if negative."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(f"keep_alive: expected a number of seconds or a duration string, got {value!r}")
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    if math.isnan(seconds):
        raise BadRequest("keep_alive: expected a number of seconds or a duration string")
    if seconds < 0 or seconds >= FOREVER_SECONDS:
        return FOREVER
    return seconds


@dataclass(eq=False)
class ModelSlot:
    info: ModelInfo
    loaded: LoadedModel | None = None
    load_task: asyncio.Task | None = None
    unload_task: asyncio.Task | None = None
    busy: bool = False  # someone holds the turn: a request, or an unload
    waiters: deque[asyncio.Future] = field(default_factory=deque)
    keep_alive: float = DEFAULT_KEEP_ALIVE
    expires_at: float | None = None  # wall-clock deadline while idle; None while busy or forever
    timer: asyncio.TimerHandle | None = None
    last_used: float = 0.0
    stale: bool = False  # the model was deleted or replaced: read its info again once free

    @property
    def idle(self) -> bool:
        return self.loaded is not None and not self.busy and not self.waiters

    @property
    def occupies_memory(self) -> bool:
        return self.loaded is not None or self.load_task is not None or self.unload_task is not None


@dataclass(frozen=True)
class RunningModel:
    """A loaded model as /api/ps shows it; expires_at is epoch seconds, None for forever."""

    model: LoadedModel
    expires_at: float | None


@dataclass(eq=False)
class Lease:
    """The turn on a loaded model; release() (synchronous, safe in a cancelled task) gives it back."""

    scheduler: Scheduler
    slot: ModelSlot
    model: LoadedModel
    load_duration_ns: int
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.scheduler._release(self.slot)


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        max_loaded: int = 3,
        max_queue: int = 512,
        default_keep_alive: float = DEFAULT_KEEP_ALIVE,
    ):
        self.engine = engine
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.default_keep_alive = default_keep_alive
        self._slots: dict[str, ModelSlot] = {}
        self._pending = 0
        self._closing = False
        self._changed = asyncio.Event()

    # -- what is installed and loaded ---------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return self.engine.list_models()

    def model_info(self, name: str) -> ModelInfo:
        return self._slot(name).info

    def running(self) -> list[RunningModel]:
        now = time.time()
        out = []
        for slot in sorted(self._slots.values(), key=lambda s: -s.last_used):
            if slot.loaded is None:
                continue
            if slot.keep_alive == FOREVER:
                expires = None
            elif slot.expires_at is None:  # in use: the timer starts again when it finishes
                expires = now + slot.keep_alive
            else:
                expires = slot.expires_at
            out.append(RunningModel(slot.loaded, expires))
        return out

    def _slot(self, asked: str) -> ModelSlot:
        name = full_name(asked)
        slot = self._slots.get(name)
        if slot is not None and slot.stale:
            if not any(m.name == name for m in self.engine.list_models()):
                raise UnknownModel(asked)  # deleted, though its last request may still be running
            if not (slot.busy or slot.waiters or slot.occupies_memory):
                del self._slots[name]
                slot = None
        if slot is None:
            info = next((m for m in self.engine.list_models() if m.name == name), None)
            if info is None:
                raise UnknownModel(asked)
            slot = self._slots[name] = ModelSlot(info)
        return slot

    # -- using a model -------------------------------------------------------------------

    async def acquire(self, name: str, keep_alive: float | None = None) -> Lease:
        """Wait for this model's turn, load it if needed, and hold it until Lease.release()."""
        slot = self._slot(name)
        self._check_open()
        if self._pending >= self.max_queue:
            raise ServerBusy()
        self._pending += 1
        try:
            await self._take_turn(slot)
        finally:
            self._pending -= 1
        try:
            self._check_open()
            self._cancel_timer(slot)
            started = time.monotonic_ns()
            was_loaded = slot.loaded is not None
            await self._ensure_loaded(slot)
            assert slot.loaded is not None
            if keep_alive is not None:
                slot.keep_alive = keep_alive
            load_ns = 0 if was_loaded else time.monotonic_ns() - started
            return Lease(self, slot, slot.loaded, load_ns)
        except BaseException:
            self._give_turn(slot)
            raise

    async def preload(self, name: str, keep_alive: float | None = None) -> None:
        """Load a model (no prompt). A loaded model only takes the new keep_alive, at once,
        even while busy, like Ollama: a preload never waits behind a running request."""
        slot = self._slot(name)
        if slot.loaded is None:
            (await self.acquire(name, keep_alive)).release()
            return
        if keep_alive is not None:
            slot.keep_alive = keep_alive
        if slot.idle:
            self._arm_timer(slot)  # the timer restarts, as after any request

    async def unload(self, name: str) -> None:
        """keep_alive 0 with no prompt: unload now if idle, else as soon as the running request ends."""
        slot = self._slot(name)
        while True:
            if slot.busy or slot.waiters:
                slot.keep_alive = 0  # Lease.release unloads it
                return
            if slot.load_task is not None:  # its requester left while it loaded
                await asyncio.gather(asyncio.shield(slot.load_task), return_exceptions=True)
                continue
            if slot.unload_task is not None:
                await asyncio.shield(slot.unload_task)
                return
            if slot.loaded is None:
                return
            slot.busy = True
            await asyncio.shield(self._unload_holding_turn(slot))
            return

    def forget(self, name: str) -> None:
        """A model was deleted or replaced (/api/delete, /api/create): unload it as soon as it is
        idle, and read its description afresh from the engine for the next request."""
        slot = self._slots.get(full_name(name))
        if slot is None:
            return
        slot.keep_alive = 0  # a running request finishes; Lease.release then unloads it
        if slot.idle and slot.load_task is None and slot.unload_task is None:
            slot.busy = True
            self._unload_holding_turn(slot)
        if not slot.busy and not slot.waiters and not slot.occupies_memory:
            del self._slots[slot.info.name]
        else:
            slot.stale = True  # replaced in _slot() once it holds nothing

    def _release(self, slot: ModelSlot) -> None:
        if slot.keep_alive == 0 and slot.loaded is not None:
            self._unload_holding_turn(slot)
        else:
            self._give_turn(slot)

    # -- turns: one request per model, FIFO ----------------------------------------------

    async def _take_turn(self, slot: ModelSlot) -> None:
        if not slot.busy and not slot.waiters:
            slot.busy = True
            self._cancel_timer(slot)
            return
        turn = asyncio.get_running_loop().create_future()
        slot.waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.exception() is None:
                self._give_turn(slot)  # handed over just as the client left: pass it on
            elif turn in slot.waiters:
                slot.waiters.remove(turn)
            raise
        self._cancel_timer(slot)

    def _give_turn(self, slot: ModelSlot) -> None:
        slot.last_used = time.monotonic()
        self._notify()  # memory may have been freed even when the turn passes on
        while slot.waiters:
            turn = slot.waiters.popleft()
            if not turn.done():
                turn.set_result(None)  # the turn passes on: busy stays True
                return
        slot.busy = False
        if slot.loaded is not None and not self._closing:
            self._arm_timer(slot)

    # -- loading, eviction, expiry ---------------------------------------------------------

    async def _ensure_loaded(self, slot: ModelSlot) -> None:
        while slot.loaded is None:
            if slot.load_task is None:
                await self._make_room(slot)
                if slot.loaded is not None or slot.load_task is not None:
                    continue
                slot.load_task = asyncio.create_task(self._load(slot))
                slot.load_task.add_done_callback(_consume_exception)
            # Shielded: a real engine cannot abandon a load half-way; if the client
            # leaves, the load finishes and the model stays for the next request.
            await asyncio.shield(slot.load_task)

    async def _load(self, slot: ModelSlot) -> None:
        try:
            loaded = await self.engine.load(slot.info.name)
            slot.loaded = loaded
            if slot.stale:  # replaced while its old version was busy: this is the new one
                slot.info, slot.stale = loaded.info, False
            slot.keep_alive = self.default_keep_alive
            slot.last_used = time.monotonic()
            if not slot.busy and not self._closing:  # its requester left while it loaded
                self._arm_timer(slot)
        finally:
            slot.load_task = None
            self._notify()

    async def _make_room(self, slot: ModelSlot) -> None:
        while True:
            self._check_open()
            others = [s for s in self._slots.values() if s is not slot and s.occupies_memory]
            if len(others) < self.max_loaded:
                return
            idle = [s for s in others if s.idle and s.load_task is None and s.unload_task is None]
            if idle:
                victim = min(idle, key=lambda s: s.last_used)
                victim.busy = True
                await asyncio.shield(self._unload_holding_turn(victim))
                continue
            changed = self._changed
            await changed.wait()

    def _unload_holding_turn(self, slot: ModelSlot) -> asyncio.Task:
        self._cancel_timer(slot)
        task = asyncio.create_task(self._unload_then_give_turn(slot))
        task.add_done_callback(_consume_exception)
        slot.unload_task = task
        return task

    async def _unload_then_give_turn(self, slot: ModelSlot) -> None:
        loaded, slot.loaded = slot.loaded, None
        try:
            if loaded is not None:
                await self.engine.unload(loaded)
        finally:
            slot.unload_task = None
            slot.expires_at = None
            self._give_turn(slot)

    def _arm_timer(self, slot: ModelSlot) -> None:
        self._cancel_timer(slot)
        if slot.keep_alive == FOREVER:
            return
        slot.expires_at = time.time() + slot.keep_alive
        slot.timer = asyncio.get_running_loop().call_later(slot.keep_alive, self._expire, slot)

    def _cancel_timer(self, slot: ModelSlot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.expires_at = None

    def _expire(self, slot: ModelSlot) -> None:
        slot.timer = None
        if slot.idle and slot.unload_task is None and slot.load_task is None:
            slot.busy = True
            self._unload_holding_turn(slot)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- shutdown --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise ShuttingDown()

    def begin_shutdown(self) -> None:
        """Refuse new requests and answer every queued one with 503."""
        self._closing = True
        for slot in self._slots.values():
            self._cancel_timer(slot)
            while slot.waiters:
                turn = slot.waiters.popleft()
                if not turn.done():
                    turn.set_exception(ShuttingDown())
        self._notify()

    async def close(self) -> None:
        """Unload everything; call once no request runs any more."""
        self.begin_shutdown()
        for slot in self._slots.values():
            for task in (slot.load_task, slot.unload_task):
                if task is not None:
                    await asyncio.gather(task, return_exceptions=True)
            if slot.loaded is not None:
                loaded, slot.loaded = slot.loaded, None
                await self.engine.unload(loaded)
        await self.engine.close()


def _consume_exception(task: asyncio.Task) -> None:
    # Whoever awaited the task saw its exception; this keeps asyncio from logging it again.
    if not task.cancelled():
        task.exception()
