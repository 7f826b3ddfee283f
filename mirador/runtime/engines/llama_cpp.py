"""The llama.cpp engine of `mirador serve`: real inference on the GGUF files of the model store.

Each loaded model owns one worker thread (a one-thread executor): loading,
generating, embedding and unloading a model all run there, one at a time, so
llama.cpp never sees two calls on one context and the event loop never blocks.
Tokens cross from the worker to the loop through an asyncio queue; closing the
generation (client gone, stop sequence, num_predict, shutdown) sets a cancel
flag the worker checks between tokens, and waits for the worker to stop before
the model is handed to the next request.

llama_cpp is imported by llama_runner, which only this module imports, and
only when a model loads: `mirador serve models` and the client never pay for it.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mirador.runtime.engines.base import (
    EngineError,
    GenerationRequest,
    GenerationStats,
    LoadedModel,
    ModelInfo,
)
from mirador.runtime.store import ModelStore, StoreError

_DONE = object()
MAX_BATCH = 64  # tokens handed to the server at once when a slow client lets them pile up


@dataclass
class _Failed:
    error: BaseException


@dataclass(eq=False)
class LlamaHandle:
    """LoadedModel.handle of this engine: the model's worker thread and what runs there."""

    executor: ThreadPoolExecutor
    runner: Any  # llama_runner.ModelRunner, typed loosely so llama_cpp stays unimported here


class LlamaEngine:
    name = "llama_cpp"

    def __init__(self, store: ModelStore, threads: int | None = None):
        self.store = store
        self.threads = threads
        self._loaded: set[LlamaHandle] = set()

    def list_models(self) -> list[ModelInfo]:
        return self.store.model_infos()

    def default_options(self, name: str) -> dict[str, Any]:
        """The model's PARAMETERs; the server lays a request's options over them."""
        model = self.store.get(name)
        return dict(model.parameters) if model else {}

    async def load(self, name: str) -> LoadedModel:
        model = self.store.get(name)
        if model is None:
            raise EngineError(f"model '{name}' not found")
        try:
            # Checked again at every load: the file may have changed since it was listed,
            # and llama.cpp would crash the server on a truncated file (it maps the weights).
            facts = await asyncio.to_thread(self.store.facts, model.gguf)
            if model.adapter:
                await asyncio.to_thread(self.store.facts, model.adapter, "the adapter")
        except StoreError as exc:
            raise EngineError(f"cannot load '{name}': {exc.message}") from None
        info = self.store.info(model)
        num_ctx = model.parameters.get("num_ctx")
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{name}")
        try:
            runner = await asyncio.get_running_loop().run_in_executor(executor, _open_runner, model, facts, num_ctx,
                                                                      self.threads)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        handle = LlamaHandle(executor, runner)
        self._loaded.add(handle)
        return LoadedModel(info=info, size_vram=0, context_length=runner.n_ctx, handle=handle)

    async def unload(self, loaded: LoadedModel) -> None:
        handle: LlamaHandle = loaded.handle
        if handle not in self._loaded:
            return
        self._loaded.discard(handle)
        # Queued behind any work still running on the model, so nothing uses a freed context.
        await asyncio.get_running_loop().run_in_executor(handle.executor, handle.runner.close)
        handle.executor.shutdown(wait=False)

    async def generate(
        self, loaded: LoadedModel, request: GenerationRequest, stats: GenerationStats
    ) -> AsyncIterator[list[str]]:
        handle: LlamaHandle = loaded.handle
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody reads any more
                cancel.set()

        def work() -> None:
            try:
                handle.runner.generate(request, stats, cancel, emit)
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the stream
                emit(_Failed(exc))
            else:
                emit(_DONE)

        job = loop.run_in_executor(handle.executor, work)
        try:
            while True:
                batch: list[str] = []
                item = await queue.get()
                while True:
                    if item is _DONE:
                        if batch:
                            yield batch
                        return
                    if isinstance(item, _Failed):
                        if batch:
                            yield batch
                        raise _engine_error(item.error)
                    batch.append(item)
                    if len(batch) >= MAX_BATCH or queue.empty():
                        break
                    item = queue.get_nowait()
                yield batch
        finally:
            cancel.set()
            # The worker stops within a token; only then may the next request use the model.
            await asyncio.wait({job})
            loaded.context_length = handle.runner.n_ctx  # a num_ctx request may have grown it

    async def embed(self, loaded: LoadedModel, texts: list[str]) -> list[list[float]]:
        handle: LlamaHandle = loaded.handle
        try:
            return await asyncio.get_running_loop().run_in_executor(handle.executor, handle.runner.embed, texts)
        except EngineError:
            raise
        except Exception as exc:
            raise _engine_error(exc) from None

    async def close(self) -> None:
        for handle in list(self._loaded):
            self._loaded.discard(handle)
            await asyncio.get_running_loop().run_in_executor(handle.executor, handle.runner.close)
            handle.executor.shutdown(wait=True)


def _open_runner(model: Any, facts: Any, num_ctx: Any, threads: int | None) -> Any:
    from mirador.runtime.engines.llama_runner import ModelRunner

    return ModelRunner(
        model.gguf, adapter=model.adapter, template=model.template, system=model.system,
        num_ctx=num_ctx if isinstance(num_ctx, int) and num_ctx > 0 else None,
        train_ctx=int(facts.header.get("context_length") or 0), threads=threads,
    )


def _engine_error(exc: BaseException) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    return EngineError(f"llama.cpp failed: {type(exc).__name__}: {exc}")


def create_engine(args: argparse.Namespace) -> LlamaEngine:
    """The factory `mirador serve --engine llama_cpp` calls (see cli/serve.py)."""
    try:
        import llama_cpp  # noqa: F401 - fail at start-up, not at the first request
    except ImportError as exc:
        raise ModuleNotFoundError(str(exc), name=exc.name or "llama_cpp") from None
    store = ModelStore().open()
    return LlamaEngine(store, threads=getattr(args, "threads", None))
