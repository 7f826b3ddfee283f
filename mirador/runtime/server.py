"""The embedded Ollama-compatible HTTP server (`mirador serve`), on aiohttp.

Speaks Ollama's native API as OLLAMA_API.md describes it, so real clients (the
official `ollama` package, LangChain, llm-ollama) work unchanged. Models come
from an Engine (runtime/engines/base.py); queues, keep_alive and eviction from
the Scheduler. aiohttp is imported here only: the client path never loads it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import Any

from aiohttp import web

from mirador.errors import RuntimeUnavailable
from mirador.runtime.engines.base import (
    Engine,
    EngineError,
    GenerationRequest,
    GenerationStats,
    limit_generation,
)
from mirador.runtime.scheduler import (
    FOREVER_SECONDS,
    BadRequest,
    Lease,
    Scheduler,
    ServeError,
    ShuttingDown,
    parse_keep_alive,
)
from mirador.runtime.store import StoreError

# Reported by /api/version: clients that gate features on the Ollama version see a recent one.
OLLAMA_VERSION = "0.12.0"
MAX_BODY = 64 * 1024 * 1024

_second = -1
_second_text = ""


def rfc3339_nano(ns: int | None = None) -> str:
    """UTC time as Go's RFC3339Nano writes it (trailing zeros trimmed), as Ollama sends it."""
    global _second, _second_text
    ns = time.time_ns() if ns is None else ns
    second, fraction = divmod(ns, 1_000_000_000)
    if second != _second:  # formatting the date once a second keeps 10k chunks/s cheap
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    if not fraction:
        return _second_text + "Z"
    return f"{_second_text}.{fraction:09d}".rstrip("0") + "Z"


def _expires_text(epoch: float | None) -> str:
    return rfc3339_nano(int(((time.time() + FOREVER_SECONDS) if epoch is None else epoch) * 1e9))


class ChunkWriter:
    """Formats the NDJSON lines of one chat or generate stream, by string templates for speed."""

    def __init__(self, model: str, chat: bool):
        self.chat = chat
        self.head = '{"model":' + json.dumps(model) + ',"created_at":"'
        if chat:
            self.mid, self.tail = '","message":{"role":"assistant","content":', '},"done":false}\n'
        else:
            self.mid, self.tail = '","response":', ',"done":false}\n'

    def lines(self, pieces: list[str]) -> bytes:
        # An empty piece is a token that ends mid-character: counted, but nothing to send yet.
        start = self.head + rfc3339_nano() + self.mid
        return "".join(f"{start}{json.dumps(p, ensure_ascii=False)}{self.tail}" for p in pieces if p).encode()

    def final(self, model: str, text: str, done_reason: str, stats: dict[str, int] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": rfc3339_nano()}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
        else:
            out["response"] = text
        out["done"] = True
        out["done_reason"] = done_reason
        out.update(stats or {})
        return out


def _json_line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class OllamaServer:
    def __init__(self, engine: Engine, scheduler: Scheduler, record: Path | None = None):
        self.engine = engine
        self.scheduler = scheduler
        self.record = record
        self.stopping = False
        self._pumps: set[asyncio.Task] = set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        app.router.add_get("/", self.root)
        app.router.add_get("/api/version", self.version)
        app.router.add_get("/api/tags", self.tags)
        app.router.add_get("/api/ps", self.ps)
        app.router.add_post("/api/chat", self.chat)
        app.router.add_post("/api/generate", self.generate)
        app.router.add_post("/api/embed", self.embed)
        app.router.add_post("/api/embeddings", self.embeddings)
        from mirador.runtime.server_models import ModelRoutes  # it imports this module

        ModelRoutes(self).register(app)
        return app

    def begin_shutdown(self) -> None:
        """End running streams with an {"error"} line and refuse queued and new requests."""
        self.stopping = True
        self.scheduler.begin_shutdown()
        for pump in list(self._pumps):
            pump.cancel()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        # A blob upload (a GGUF: gigabytes) is streamed to disk by its handler, never read here.
        streamed = request.path.startswith("/api/blobs/")
        raw = await request.read() if request.can_read_body and not streamed else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError as exc:
            body, request["json_error"] = raw.decode("utf-8", "replace"), str(exc)
        request["body"] = body
        if self.record is not None:
            self._record(request.method, request.path, body)
        try:
            return await handler(request)
        except ServeError as exc:
            return _error(exc.status, exc.message)
        except StoreError as exc:
            return _error(exc.status, exc.message)
        except EngineError as exc:  # a model that fails to load: this request fails, the server serves on
            return _error(500, exc.message)

    def _record(self, method: str, path: str, body: Any) -> None:
        # Opened per request so every line is on disk before the request is answered.
        with self.record.open("a", encoding="utf-8") as f:  # type: ignore[union-attr]
            f.write(json.dumps({"method": method, "path": path, "body": body}, ensure_ascii=False) + "\n")

    # -- small endpoints --------------------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": OLLAMA_VERSION})

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"name": m.name, "model": m.name, "modified_at": m.modified_at, "size": m.size,
             "digest": m.digest, "details": m.details()}
            for m in self.scheduler.models()
        ]})

    async def ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [
            {"name": r.model.info.name, "model": r.model.info.name, "size": r.model.info.size,
             "digest": r.model.info.digest, "details": r.model.info.details(),
             "expires_at": _expires_text(r.expires_at), "size_vram": r.model.size_vram,
             "context_length": r.model.context_length}
            for r in self.scheduler.running()
        ]})

    # -- chat and generate --------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            raise BadRequest("messages: expected a list of {role, content} objects")
        for m in messages:
            if m.get("content") is not None and not isinstance(m["content"], str):
                raise BadRequest("messages: content must be a string")
        return await self._generation(request, body, GenerationRequest(messages=messages), bool(messages))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        prompt, system = body.get("prompt") or "", body.get("system")
        if not isinstance(prompt, str) or (system is not None and not isinstance(system, str)):
            raise BadRequest("prompt and system must be strings")
        gen = GenerationRequest(prompt=prompt, system=system)
        return await self._generation(request, body, gen, prompt != "")

    async def _generation(
        self, request: web.Request, body: dict[str, Any], gen: GenerationRequest, has_input: bool
    ) -> web.StreamResponse:
        started = time.monotonic_ns()
        chat = gen.messages is not None
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        name = self.scheduler.model_info(_model_name(body)).name
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequest("options: expected an object")
        defaults = getattr(self.engine, "default_options", None)  # the model's own PARAMETERs
        if defaults is not None:
            options = {**defaults(name), **options}
        writer = ChunkWriter(name, chat)
        if not has_input:  # preload or unload: Ollama answers one object whatever "stream" says
            if keep_alive == 0:
                await self.scheduler.unload(name)
                return web.json_response(writer.final(name, "", "unload", None))
            await self.scheduler.preload(name, keep_alive)
            return web.json_response(writer.final(name, "", "load", None))
        gen = GenerationRequest(gen.messages, gen.prompt, gen.system, options)
        lease = await self.scheduler.acquire(name, keep_alive)
        try:
            if body.get("stream", True) is False:
                return await self._answer_whole(lease, gen, writer, started)
            return await self._answer_stream(request, lease, gen, writer, started)
        finally:
            lease.release()

    async def _answer_stream(
        self, request: web.Request, lease: Lease, gen: GenerationRequest, writer: ChunkWriter, started: int
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)

        async def send(pieces: list[str]) -> None:
            await response.write(writer.lines(pieces))

        try:
            stats, error = await self._run(lease, gen, send, started)
        except ConnectionResetError:
            return response  # the client left; releasing the lease frees the model
        name = lease.model.info.name
        last = {"error": error} if error else writer.final(name, "", stats.pop("done_reason"), stats)
        try:
            await response.write(_json_line(last))
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response

    async def _answer_whole(
        self, lease: Lease, gen: GenerationRequest, writer: ChunkWriter, started: int
    ) -> web.Response:
        parts: list[str] = []

        async def collect(pieces: list[str]) -> None:
            parts.extend(pieces)

        stats, error = await self._run(lease, gen, collect, started)
        if error:
            return _error(503 if self.stopping else 500, error)
        name = lease.model.info.name
        return web.json_response(writer.final(name, "".join(parts), stats.pop("done_reason"), stats))

    async def _run(
        self, lease: Lease, gen: GenerationRequest, sink: Callable[[list[str]], Awaitable[None]], started: int
    ) -> tuple[dict[str, Any], str | None]:
        """Generate into `sink`; returns the final stats, or the error message that ended it."""
        stats = GenerationStats()
        marks: dict[str, int] = {"start": time.monotonic_ns()}
        batches = limit_generation(self.engine.generate(lease.model, gen, stats), gen.options, stats)
        # The pump runs as its own task so shutdown can stop it without cancelling the
        # handler, which then still ends the stream with a proper last line.
        pump = asyncio.create_task(_pump(batches, sink, marks))
        self._pumps.add(pump)
        error = None
        try:
            await pump
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the client went away
            error = ShuttingDown().message
        except EngineError as exc:
            error = exc.message
        finally:
            if not pump.done():
                # Wait for the engine to really stop before the lease frees the model:
                # a real engine must never run two generations on one context.
                pump.cancel()
                await asyncio.wait({pump})
            self._pumps.discard(pump)
        end = time.monotonic_ns()
        first = marks.get("first", end)
        # Ollama's field, sent like Ollama only when the cache served part of the prompt.
        cached = {"prompt_eval_cached_count": stats.prompt_eval_cached_count} if stats.prompt_eval_cached_count else {}
        return {
            "done_reason": stats.done_reason,
            "total_duration": end - started,
            "load_duration": lease.load_duration_ns,
            "prompt_eval_count": stats.prompt_eval_count,
            **cached,
            "prompt_eval_duration": first - marks["start"],
            "eval_count": stats.eval_count,
            "eval_duration": end - first,
        }, error

    # -- embeddings ----------------------------------------------------------------------------

    async def embed(self, request: web.Request) -> web.Response:
        started = time.monotonic_ns()
        body = _body(request)
        texts = body.get("input")
        if texts is None:
            texts = []
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadRequest("input: expected a string or a list of strings")
        dimensions = body.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                       or dimensions < 1):
            raise BadRequest("dimensions: expected a positive integer")
        vectors, lease = await self._embed(body, texts)
        if dimensions:
            vectors = [_unit(v[:dimensions]) for v in vectors]
        return web.json_response({
            "model": lease.model.info.name,
            "embeddings": vectors,
            "total_duration": time.monotonic_ns() - started,
            "load_duration": lease.load_duration_ns,
            "prompt_eval_count": sum(len(t.split()) or 1 for t in texts),
        })

    async def embeddings(self, request: web.Request) -> web.Response:
        """The legacy endpoint: one `prompt`, one `embedding`."""
        body = _body(request)
        prompt = body.get("prompt") or ""
        if not isinstance(prompt, str):
            raise BadRequest("prompt: expected a string")
        vectors, _ = await self._embed(body, [prompt] if prompt else [])
        return web.json_response({"embedding": vectors[0] if vectors else []})

    async def _embed(self, body: dict[str, Any], texts: list[str]) -> tuple[list[list[float]], Lease]:
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        info = self.scheduler.model_info(_model_name(body))
        if not info.embedding_length:
            raise BadRequest(f'"{info.name}" does not support embeddings')
        lease = await self.scheduler.acquire(info.name, keep_alive)
        try:
            vectors = await self.engine.embed(lease.model, texts) if texts else []
        except EngineError as exc:
            raise ServeError(exc.message) from None
        finally:
            lease.release()
        return vectors, lease


async def _pump(
    batches: AsyncIterator[list[str]], sink: Callable[[list[str]], Awaitable[None]], marks: dict[str, int]
) -> None:
    async with aclosing(batches):
        async for pieces in batches:
            if "first" not in marks:
                marks["first"] = time.monotonic_ns()
            await sink(pieces)


def _body(request: web.Request) -> dict[str, Any]:
    if "json_error" in request:
        raise BadRequest(f"invalid JSON body: {request['json_error']}")
    body = request["body"]
    if body is None:
        raise BadRequest("missing request body")
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _model_name(body: dict[str, Any]) -> str:
    name = body.get("model") or body.get("name")  # older clients send "name"
    if not isinstance(name, str) or not name.strip():
        raise BadRequest("model is required")
    return name.strip()


def _unit(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]


async def serve(
    engine: Engine,
    host: str,
    port: int,
    *,
    max_loaded: int = 3,
    max_queue: int = 512,
    record: Path | None = None,
    on_listening: Callable[[int], None] = lambda port: None,
) -> None:
    """Run until SIGINT or SIGTERM, then end running streams cleanly and return."""
    scheduler = Scheduler(engine, max_loaded=max_loaded, max_queue=max_queue)
    server = OllamaServer(engine, scheduler, record)
    runner = web.AppRunner(
        server.app(), handler_cancellation=True, access_log=None, handle_signals=False, shutdown_timeout=5.0
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise RuntimeUnavailable(
                f"port {port} on {host} is already in use",
                hint="another server (Ollama?) listens there: stop it, or choose --port (0 picks a free one)",
            ) from None
        raise RuntimeUnavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    on_listening(runner.addresses[0][1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        server.begin_shutdown()
        await runner.cleanup()
        await scheduler.close()
