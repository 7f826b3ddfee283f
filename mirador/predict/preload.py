"""Load the models of stages 2..n while stage 1 streams, so that no later stage waits for a cold load.

A preload is a background task on the ask's own event loop and client: it
never delays stage 1, never asks for the stage-1 model (a second request to a
busy model would queue behind it, NUM_PARALLEL=1), never loads more models than
the server keeps at once (the stage-1 model counts) or than free memory holds
(the stage-1 model's size is set aside first: it wins), and does nothing in the
survival profile. A failure is never the user's problem: the stage simply
loads its model the normal way, and a model deleted meanwhile is noted once.
Once a later stage's model is loaded, it also reads the start of its stage's
prompt ahead of time (mirador.predict.prefill; the `preload_prefix` setting).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from mirador.errors import MiradorError, ModelNotFound

# Ollama's OLLAMA_MAX_LOADED_MODELS default on a CPU (3 × GPUs otherwise): the safe assumption.
DEFAULT_MAX_LOADED = 3
# Share of the free memory the preloads may fill: the OS and the running stage need the rest.
MEMORY_HEADROOM = 0.9


@dataclass(frozen=True)
class PreloadChoice:
    load: list[str]  # to preload, in the order the stages need them
    skipped: dict[str, str] = field(default_factory=dict)  # model -> why not


def choose_preloads(first: str, later: Iterable[str], *, loaded: set[str], sizes: dict[str, int],
                    free_bytes: int | None, max_loaded: int = DEFAULT_MAX_LOADED) -> PreloadChoice:
    """Which of the later stages' models to load now: in stage order, never the stage-1 model, within
    the server's limit on loaded models and the free memory (a model already loaded costs nothing)."""
    load: list[str] = []
    skipped: dict[str, str] = {}
    slots = max(0, max_loaded - (1 if first else 0))  # the stage-1 model holds one, busy: never evicted
    budget = None if free_bytes is None else int(free_bytes * MEMORY_HEADROOM)
    if budget is not None and first and first not in loaded:
        budget -= sizes.get(first, 0)  # stage 1 is loading it now: memory for it comes first
    for model in dict.fromkeys(later):
        if model == first or model in load or model in skipped:
            continue
        if model in loaded:
            slots -= 1  # warm already: it keeps a slot but needs no request
            skipped[model] = "already loaded"
            continue
        if slots <= 0:
            skipped[model] = "the server keeps no more models loaded at once"
            continue
        size = sizes.get(model, 0)
        if budget is not None and size > budget:
            skipped[model] = "not enough free memory"
            continue
        load.append(model)
        slots -= 1
        if budget is not None:
            budget -= size
    return PreloadChoice(load, skipped)


def preloading_allowed(settings: Any, profile: str | None = None) -> bool:
    """Off when the setting says so, and in the survival profile (loads cost battery)."""
    if not getattr(settings, "preload", True):
        return False
    from mirador.energy.profiles import decide_profile

    try:
        return decide_profile(profile, settings).profile != "survival"
    except MiradorError:
        return False


def free_memory_bytes() -> int | None:
    """Memory available for models; MIRADOR_FREE_MEMORY (bytes) stands in for it in tests."""
    forced = os.environ.get("MIRADOR_FREE_MEMORY")
    if forced:
        with contextlib.suppress(ValueError):
            return int(float(forced))
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def max_loaded_models(settings: Any) -> int:
    configured = getattr(settings, "preload_max_loaded", 0) or 0
    if configured > 0:
        return int(configured)
    with contextlib.suppress(ValueError):
        return max(1, int(os.environ.get("OLLAMA_MAX_LOADED_MODELS", "")))
    return DEFAULT_MAX_LOADED


class StagePreloader:
    """Preloads the later stages of one ask; `ensure` again when the router refines the plan."""

    def __init__(self, client: Any, keep_alive: Callable[[str], Any], settings: Any,
                 profile: str | None = None, on_note: Callable[[str], None] | None = None,
                 request: Any = None):
        """`request` (the ChainRequest) turns on the prefix warm-up of the stages whose models load."""
        self.client = client
        self.keep_alive = keep_alive
        self.settings = settings
        self.profile = profile
        self.on_note = on_note
        self.requested: set[str] = set()
        self.loaded: set[str] = set()  # preloads the server confirmed
        self.notes: list[str] = []
        self._tasks: list[asyncio.Task] = []
        self._allowed: bool | None = None
        self.warmer: Any = None
        if request is not None and getattr(settings, "preload_prefix", True):
            from mirador.predict.prefill import PrefixWarmer

            self.warmer = PrefixWarmer(client, request, self.loaded.__contains__)

    def observe(self, event: Any) -> None:
        """Every event of the chain: the warm-ups follow the stages' text (cheap for a token)."""
        if self.warmer is not None:
            self.warmer.observe(event)

    def ensure(self, models: list[str]) -> None:
        """Start (in the background) preloading what stages 2..n need and was not asked for yet."""
        if len(models) < 2 or not set(models[1:]) - self.requested - {models[0]}:
            return
        task = asyncio.create_task(self._run(models[0], models[1:]))
        task.add_done_callback(_consume)
        self._tasks.append(task)

    async def _run(self, first: str, later: list[str]) -> None:
        await asyncio.sleep(0)  # let stage 1's request leave first
        if self._allowed is None:
            # sysfs reads at most; in a thread so that not even they touch stage 1's loop time
            self._allowed = await asyncio.to_thread(preloading_allowed, self.settings, self.profile)
        if not self._allowed:
            return
        wanted = [m for m in later if m not in self.requested and m != first]
        if not wanted:
            return
        self.requested.update(wanted)
        try:
            running = await self.client.ps()
        except MiradorError:
            return  # the stage will say what is wrong with the server
        loaded = {_name(m) for m in running}
        # /api/show, not /api/tags: a tags call per ask is a known pitfall (OLLAMA_API.md).
        unknown = [m for m in dict.fromkeys([first, *wanted]) if m not in loaded]
        shown = await asyncio.gather(*(self._size(m) for m in unknown))
        sizes = {m: size for m, size in zip(unknown, shown, strict=True) if size is not None}
        sizes.update({_name(m): int(m.get("size") or 0) for m in running})
        wanted = [m for m in wanted if m in sizes]  # a model that is gone was noted already
        free = await asyncio.to_thread(free_memory_bytes)
        choice = choose_preloads(first, wanted, loaded=loaded, sizes=sizes, free_bytes=free,
                                 max_loaded=max_loaded_models(self.settings))
        self.loaded.update(m for m in wanted if choice.skipped.get(m) == "already loaded")
        self._pump()
        await asyncio.gather(*(self._preload(m) for m in choice.load))

    async def _size(self, model: str) -> int | None:
        """Bytes the model takes once loaded, estimated from /api/show; None if it is gone."""
        try:
            return size_from_show(await self.client.show(model))
        except ModelNotFound:
            self._note(f"{model} is no longer on the server: not preloaded")
            return None
        except MiradorError:
            return 0  # unknown: the server's own limits still apply

    async def _preload(self, model: str) -> None:
        try:
            await self.client.preload(model, self.keep_alive(model))
        except ModelNotFound:
            self._note(f"{model} is no longer on the server: not preloaded")
        except MiradorError:
            return  # the stage loads it the normal way and reports any real problem
        else:
            self.loaded.add(model)
            self._pump()

    def _pump(self) -> None:
        if self.warmer is not None:
            self.warmer.pump()

    def _note(self, text: str) -> None:
        if text in self.notes:
            return  # noted once, however often the plan names it
        self.notes.append(text)
        if self.on_note is not None:
            self.on_note(text)

    async def aclose(self) -> None:
        """Cancel what is still running (a short chain can end before its preloads)."""
        if self.warmer is not None:
            await self.warmer.aclose()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()


# Bits per weight of the common GGUF quantizations (block scales included).
_BITS = {"Q2": 3.0, "Q3": 3.9, "Q4": 4.8, "Q5": 5.7, "Q6": 6.6, "Q8": 8.5, "F16": 16.0, "BF16": 16.0, "F32": 32.0}
_SCALE = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


def size_from_show(shown: dict[str, Any]) -> int:
    """The weights' size from /api/show: parameter count times bits per weight (0 if unknown)."""
    details = shown.get("details") or {}
    count = (shown.get("model_info") or {}).get("general.parameter_count")
    if not isinstance(count, (int, float)) or count <= 0:
        text = str(details.get("parameter_size") or "").strip().upper()
        try:
            count = float(text[:-1]) * _SCALE[text[-1]]
        except (KeyError, ValueError, IndexError):
            return 0
    quant = str(details.get("quantization_level") or "Q4").upper()
    bits = next((b for prefix, b in sorted(_BITS.items(), key=lambda kv: -len(kv[0]))
                 if quant.startswith(prefix) or quant.startswith("I" + prefix)), 4.8)
    return int(count * bits / 8)


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("name") or entry.get("model") or "")


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()
