"""Ollama API client: every byte Mirador sends to a model server goes through here.

One httpx connection pool per command. `keep_alive` is always sent explicitly
(OLLAMA_API.md: leaving it out or sending a fixed "5m" surprises users), and
every failure becomes a MiradorError whose hint says what to do.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any, Self

# Importing httpx also imports its command-line tool (click, rich, pygments: about
# 40 ms, a quarter of Mirador's whole time to first token) unless that module is
# unavailable. Mirador never runs httpx's CLI, so mark it absent before the import.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import httpx  # noqa: E402

from mirador.errors import MiradorError, ModelNotFound, RuntimeFailure, RuntimeUnavailable  # noqa: E402

KeepAlive = int | float | str

# Backoff before retrying a request the server refused with 503 (queue full).
# Only ever before the first token: a stream that has started is never replayed.
RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0)


def start_server_hint(host: str) -> str:
    return (
        f"start Ollama (`ollama serve`) or Mirador's own runtime (`mirador serve`) on {host}, "
        "or point OLLAMA_HOST at the server you use"
    )


class OllamaClient:
    def __init__(self, host: str, *, connect_timeout: float = 5.0, read_timeout: float | None = None):
        self.host = host
        self._http = httpx.AsyncClient(
            base_url=host,
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout, write=60.0, pool=None),
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
            trust_env=False,  # a proxy in the environment must never see local traffic
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- streaming ---------------------------------------------------------------------

    def chat(
        self,
        model: str,
        messages: list[dict[str, Any]],
        *,
        keep_alive: KeepAlive,
        options: dict[str, Any] | None = None,
        **extra: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream /api/chat chunks; the last one has done=True and the stats."""
        body = {"model": model, "messages": messages, "stream": True, "keep_alive": keep_alive, **extra}
        if options:
            body["options"] = options
        return self._stream("/api/chat", body, model)

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        keep_alive: KeepAlive,
        options: dict[str, Any] | None = None,
        **extra: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        body = {"model": model, "prompt": prompt, "stream": True, "keep_alive": keep_alive, **extra}
        if options:
            body["options"] = options
        return self._stream("/api/generate", body, model)

    async def _stream(self, path: str, body: dict[str, Any], model: str) -> AsyncIterator[dict[str, Any]]:
        request = self._http.build_request("POST", path, json=body)
        response = await self._send_with_retry(request, model)
        try:
            async for line in response.aiter_lines():
                if not line:
                    continue
                chunk = _parse_line(line, self.host)
                if "error" in chunk:
                    raise RuntimeFailure(
                        f"{model} failed in the middle of its answer: {chunk['error']}",
                        hint=f"the server at {self.host} reported it; its log says more",
                    )
                yield chunk
                if chunk.get("done"):
                    return
            raise RuntimeUnavailable(
                f"the server at {self.host} closed the stream before {model} finished",
                hint="the server may have crashed or been stopped; what arrived was kept",
            )
        except httpx.TransportError as exc:
            raise RuntimeUnavailable(
                f"lost the connection to {self.host} while {model} was answering ({_reason(exc)})",
                hint="the server may have crashed or been stopped; what arrived was kept",
            ) from exc
        finally:
            await response.aclose()

    async def _send_with_retry(self, request: httpx.Request, model: str | None) -> httpx.Response:
        for attempt in range(len(RETRY_DELAYS_S) + 1):
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise self._unreachable(exc) from exc
            if response.status_code == 503 and attempt < len(RETRY_DELAYS_S):
                await response.aclose()
                await asyncio.sleep(RETRY_DELAYS_S[attempt])
                continue
            if response.status_code >= 400:
                await response.aread()
                await response.aclose()
                raise self._http_error(response, model)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    # -- one-shot calls ----------------------------------------------------------------

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                       model: str | None = None) -> dict[str, Any]:
        request = self._http.build_request(method, path, json=body)
        response = await self._send_with_retry(request, model)
        try:
            await response.aread()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        finally:
            await response.aclose()
        try:
            return response.json()
        except ValueError:
            raise RuntimeFailure(f"{self.host}{path} answered with something that is not JSON") from None

    async def version(self) -> str:
        return str((await self._request("GET", "/api/version")).get("version", "unknown"))

    async def tags(self) -> list[dict[str, Any]]:
        return list((await self._request("GET", "/api/tags")).get("models") or [])

    async def ps(self) -> list[dict[str, Any]]:
        return list((await self._request("GET", "/api/ps")).get("models") or [])

    async def show(self, model: str) -> dict[str, Any]:
        return await self._request("POST", "/api/show", {"model": model}, model=model)

    async def preload(self, model: str, keep_alive: KeepAlive) -> dict[str, Any]:
        """Load a model without generating (done_reason "load")."""
        body = {"model": model, "keep_alive": keep_alive, "stream": False}
        return await self._request("POST", "/api/generate", body, model=model)

    async def unload(self, model: str) -> dict[str, Any]:
        body = {"model": model, "keep_alive": 0, "stream": False}
        return await self._request("POST", "/api/generate", body, model=model)

    async def embed(self, model: str, texts: str | list[str], *, keep_alive: KeepAlive,
                    truncate: bool = True) -> list[list[float]]:
        body = {"model": model, "input": texts, "truncate": truncate, "keep_alive": keep_alive}
        return list((await self._request("POST", "/api/embed", body, model=model)).get("embeddings") or [])

    # -- errors ------------------------------------------------------------------------

    def _unreachable(self, exc: httpx.TransportError) -> MiradorError:
        return RuntimeUnavailable(
            f"cannot reach the model server at {self.host} ({_reason(exc)})",
            hint=start_server_hint(self.host),
        )

    def _http_error(self, response: httpx.Response, model: str | None) -> MiradorError:
        try:
            message = str(response.json().get("error") or response.text)
        except ValueError:
            message = response.text.strip() or response.reason_phrase
        status = response.status_code
        if status == 404 and model and "not found" in message.lower():
            return ModelNotFound(model, self.host)
        if status == 503:
            return RuntimeFailure(
                f"the server at {self.host} is busy and kept refusing requests: {message}",
                hint="too many requests are queued; try again in a moment",
            )
        return RuntimeFailure(f"the server at {self.host} answered HTTP {status}: {message}")


def _parse_line(line: str, host: str) -> dict[str, Any]:
    try:
        chunk = json.loads(line)
    except ValueError:
        raise RuntimeFailure(f"the server at {host} sent a line that is not JSON: {line[:80]!r}") from None
    if not isinstance(chunk, dict):
        raise RuntimeFailure(f"the server at {host} sent an unexpected line: {line[:80]!r}")
    return chunk


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        return "connection refused" if "refused" in text or "errno 111" in text else f"cannot connect: {exc}"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__
