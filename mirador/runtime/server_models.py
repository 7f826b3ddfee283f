"""The model-management endpoints of the embedded server: show, create, copy, delete, pull, blobs.

They work on the engine's model store (runtime/store.py). An engine without a
store (the scripted one) answers 400 to everything that would change models.
Every check (a digest, a GGUF header, a template) is done before the first
status line, so a bad request gets a real HTTP status, like Ollama's 400s.

MIRADOR_SERVE_REFUSE_ADAPTERS=1 in the server's environment makes /api/create refuse
adapters with a 400, as recent Ollama releases do: a switch for tests of the fused-model
fallback of `mirador train` (learn/deploy.py), not meant for users.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mirador.runtime.engines.base import ModelInfo, full_name
from mirador.runtime.modelfile import build_model, parse_digest, spec_from_json
from mirador.runtime.scheduler import BadRequest, ServeError
from mirador.runtime.server import _body, _json_line, _model_name
from mirador.runtime.store import ModelStore, StoredModel, StoreError

if TYPE_CHECKING:
    from mirador.runtime.server import OllamaServer

REFUSE_ADAPTERS_ENV = "MIRADOR_SERVE_REFUSE_ADAPTERS"


class ModelRoutes:
    def __init__(self, server: OllamaServer):
        self.server = server

    def register(self, app: web.Application) -> None:
        app.router.add_post("/api/show", self.show)
        app.router.add_post("/api/create", self.create)
        app.router.add_post("/api/copy", self.copy)
        app.router.add_delete("/api/delete", self.delete)
        app.router.add_post("/api/pull", self.pull)
        app.router.add_post("/api/blobs/{digest}", self.upload_blob)
        app.router.add_head("/api/blobs/{digest}", self.has_blob)

    def _store(self) -> ModelStore:
        store = getattr(self.server.engine, "store", None)
        if store is None:
            raise BadRequest(f"not supported by the {self.server.engine.name} engine")
        return store

    # -- show --------------------------------------------------------------------------------

    async def show(self, request: web.Request) -> web.Response:
        info = self.server.scheduler.model_info(_model_name(_body(request)))
        store = getattr(self.server.engine, "store", None)
        stored = store.get(info.name) if store is not None else None
        parameters = stored.parameters if stored else {}
        out: dict[str, Any] = {
            "modelfile": _modelfile(info, stored),
            "parameters": "\n".join(f"{k:<30} {_param_text(v)}" for k, values in parameters.items()
                                    for v in (values if isinstance(values, list) else [values])),
            "template": info.template,
            "details": info.details(),
            "model_info": model_info(info),
            "capabilities": info.capabilities,
            "modified_at": info.modified_at,
        }
        if info.system:
            out["system"] = info.system
        return web.json_response(out)

    # -- create, copy, delete ------------------------------------------------------------------

    async def create(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        store = self._store()
        name = full_name(_model_name(body))
        spec = spec_from_json(body)
        if spec.adapters and os.environ.get(REFUSE_ADAPTERS_ENV, "") not in ("", "0"):
            raise BadRequest(f"this runtime does not create models with adapters ({REFUSE_ADAPTERS_ENV} is set)")
        model, parent = await asyncio.to_thread(build_model, store, name, spec)
        # put() reads (and, for a new file, hashes) the GGUF: a worker thread keeps the loop free.
        info = await asyncio.to_thread(store.put, model)
        self.server.scheduler.forget(name)  # a loaded older version must not keep serving
        statuses = ([f"using existing model {parent}"] if parent else []) + _layers(store, model) + [
            "writing manifest", "success"]
        return await _statuses(request, body, statuses, info)

    async def copy(self, request: web.Request) -> web.Response:
        body = _body(request)
        store = self._store()
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not isinstance(destination, str) or not destination.strip():
            raise BadRequest("source and destination are required")
        await asyncio.to_thread(store.copy, source, destination)
        self.server.scheduler.forget(destination)
        return web.Response()

    async def delete(self, request: web.Request) -> web.Response:
        body = _body(request)
        store = self._store()
        name = _model_name(body)
        store.delete(name)
        self.server.scheduler.forget(name)
        return web.Response()

    # -- pull ----------------------------------------------------------------------------------

    async def pull(self, request: web.Request) -> web.StreamResponse:
        body = _body(request)
        store = self._store()
        name = full_name(_model_name(body))
        if store.get(name) is None and not store.can_provide(name):
            raise ServeError(
                f"model '{name}' cannot be downloaded: mirador serve works offline and provides only the "
                f"models of its store (smollm2:135m ships with it); import a GGUF file with "
                f"/api/create (FROM /path/to/model.gguf)", status=404)
        info = await asyncio.to_thread(store.provide, name) if store.get(name) is None else None
        info = info or store.info(store.require(name))
        statuses = ["pulling manifest", f"pulling {info.digest[:12]}", "verifying sha256 digest",
                    "writing manifest", "success"]
        return await _statuses(request, body, statuses, info)

    # -- blobs ---------------------------------------------------------------------------------

    async def has_blob(self, request: web.Request) -> web.Response:
        store = self._store()
        digest = parse_digest(request.match_info["digest"])
        return web.Response(status=200 if store.has_blob(digest) else 404)

    async def upload_blob(self, request: web.Request) -> web.Response:
        store = self._store()
        digest = parse_digest(request.match_info["digest"])
        temp = store.blob_temp()
        hasher = hashlib.sha256()
        try:
            # Streamed to disk: a GGUF is gigabytes, far past what one request may hold in memory.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                async for chunk in request.content.iter_chunked(1 << 20):
                    hasher.update(chunk)
                    await asyncio.to_thread(f.write, chunk)
            if hasher.hexdigest() != digest:
                raise BadRequest(f"digest mismatch: the upload is sha256:{hasher.hexdigest()}, "
                                 f"not sha256:{digest}")
            os.replace(temp, store.blob_path(digest))
        finally:
            temp.unlink(missing_ok=True)
        return web.Response(status=201)


async def _statuses(request: web.Request, body: dict[str, Any], statuses: list[str],
                    info: ModelInfo) -> web.StreamResponse:
    if body.get("stream", True) is False:
        return web.json_response({"status": "success"})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for status in statuses:
        line: dict[str, Any] = {"status": status}
        if status.startswith("pulling ") and status != "pulling manifest":
            line.update(digest=f"sha256:{info.digest}", total=info.size, completed=info.size)
        await response.write(_json_line(line))
    await response.write_eof()
    return response


def _layers(store: ModelStore, model: StoredModel) -> list[str]:
    out = []
    for path in (model.gguf, model.adapter):
        if path:
            out.append(f"using existing layer sha256:{store.facts(path).sha256}")
    for what in ("template", "system", "parameters"):
        if getattr(model, what):
            out.append(f"creating new layer ({what})")
    return out


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _modelfile(info: ModelInfo, stored: StoredModel | None) -> str:
    lines = ['# Modelfile generated by "mirador serve"', "# To build a new Modelfile based on this, replace FROM with:",
             f"# FROM {info.name}", "", f"FROM {stored.gguf if stored else info.name}"]
    if info.template:
        lines.append(f'TEMPLATE """{info.template}"""')
    if info.system:
        lines.append(f'SYSTEM """{info.system}"""')
    for key, values in (stored.parameters if stored else {}).items():
        for value in values if isinstance(values, list) else [values]:
            lines.append(f"PARAMETER {key} {_param_text(value)}")
    if stored and stored.adapter:
        lines.append(f"ADAPTER {stored.adapter}")
    return "\n".join(lines) + "\n"


def model_info(info: ModelInfo) -> dict[str, Any]:
    arch = info.family
    out: dict[str, Any] = {
        "general.architecture": arch,
        "general.basename": info.name.split(":")[0],
        "general.parameter_count": _parameter_count(info.parameter_size),
        f"{arch}.context_length": info.context_length,
    }
    if info.embedding_length:
        out[f"{arch}.embedding_length"] = info.embedding_length
    return out


def _parameter_count(size: str) -> int:
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    try:
        return int(float(size[:-1]) * scale[size[-1].upper()])
    except (KeyError, ValueError, IndexError):
        return 0


__all__ = ["ModelRoutes", "StoreError", "model_info"]
