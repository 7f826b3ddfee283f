"""The Engine interface behind `mirador serve`, and the option handling every engine shares.

An engine knows how to list, load, unload, run and embed with models; the server
(runtime/server.py) and the scheduler (runtime/scheduler.py) own HTTP, queues,
keep_alive and eviction. A real engine (llama.cpp) plugs in by implementing
`Engine`; it never needs to know about HTTP.

Generation is an async generator of *batches* of token texts: everything the
engine has ready at that moment. A real engine yields one token per batch; the
scripted engine, running at 10,000 tokens/s, yields a few dozen at once so the
server writes them to the socket in one go. Closing the generator (`aclose`, or
cancelling the task that iterates it) must stop generation at once: that is how
a client disconnect frees the model for the next request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from mirador.errors import RuntimeFailure


class EngineError(RuntimeFailure):
    """A model failed while loading or generating; the server reports it as {"error": message}."""


@dataclass(frozen=True)
class ModelInfo:
    """An installed model, as /api/tags and /api/show describe it."""

    name: str  # always with a tag: "llama3.2:1b", "tiny:latest"
    size: int
    digest: str  # 64 hex digits, no "sha256:" prefix, like Ollama's /api/tags
    family: str
    parameter_size: str
    quantization_level: str
    format: str = "gguf"
    context_length: int = 4096
    embedding_length: int = 0  # 0: the model cannot embed
    modified_at: str = ""  # RFC3339
    parent_model: str = ""
    template: str = "{{ .Prompt }}"
    system: str = ""

    @property
    def capabilities(self) -> list[str]:
        return ["completion", "embedding"] if self.embedding_length else ["completion"]

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": self.parent_model,
            "format": self.format,
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


@dataclass
class LoadedModel:
    """A model in memory. `handle` is the engine's own object (a llama.cpp context, a script)."""

    info: ModelInfo
    size_vram: int = 0
    context_length: int = 4096
    handle: Any = None


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: chat `messages` or a raw `prompt` (with an optional `system`)."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    system: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def last_user_text(self) -> str:
        if self.messages is None:
            return self.prompt or ""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return str(message.get("content") or "")
        return ""

    def all_text(self) -> str:
        if self.messages is None:
            return " ".join(part for part in (self.system, self.prompt) if part)
        return " ".join(str(m.get("content") or "") for m in self.messages)


@dataclass
class GenerationStats:
    """Filled in by the engine while it generates; read by the server for the last chunk."""

    prompt_eval_count: int = 0
    prompt_eval_cached_count: int = 0  # of those, read from the KV cache (a shared prefix): not evaluated again
    eval_count: int = 0
    done_reason: str = "stop"  # "stop" or "length"


class Engine(Protocol):
    name: str

    def list_models(self) -> list[ModelInfo]:
        """The installed models; cheap, called on every request."""
        ...

    async def load(self, name: str) -> LoadedModel:
        """Load a model into memory; returns once it can generate."""
        ...

    async def unload(self, loaded: LoadedModel) -> None:
        """Free a model's memory."""
        ...

    def generate(
        self, loaded: LoadedModel, request: GenerationRequest, stats: GenerationStats
    ) -> AsyncIterator[list[str]]:
        """Yield batches of token texts; raise EngineError to fail mid-stream."""
        ...

    async def embed(self, loaded: LoadedModel, texts: list[str]) -> list[list[float]]:
        """One unit vector per text."""
        ...

    async def close(self) -> None:
        """Release everything at server shutdown."""
        ...


def full_name(name: str) -> str:
    """Ollama's model names always carry a tag; a bare name means ':latest'."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def stop_sequences(options: dict[str, Any]) -> list[str]:
    stop = options.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list):
        return []
    return [s for s in stop if isinstance(s, str) and s]


def token_limit(options: dict[str, Any]) -> int | None:
    """options.num_predict as Ollama reads it: negative (or absent) means no limit."""
    value = options.get("num_predict")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return None
    return int(value)


async def limit_generation(
    batches: AsyncIterator[list[str]], options: dict[str, Any], stats: GenerationStats
) -> AsyncIterator[list[str]]:
    """Apply num_predict and stop sequences on top of any engine, so engines need not.

    Text that might be the start of a stop sequence is held back until the next
    token shows whether it is; the stop sequence itself is never sent, like Ollama.
    Stopping early closes the engine's generator, which ends its generation.
    stats.eval_count ends as the number of engine tokens consumed.
    """
    limit = token_limit(options)
    stops = stop_sequences(options)
    consumed = 0
    held = ""
    try:
        if limit == 0:
            stats.done_reason = "length"
            return
        async for batch in batches:
            out: list[str] = []
            finished = False
            for token in batch:
                consumed += 1
                if stops:
                    held += token
                    cut = _first_stop(held, stops)
                    if cut is not None:
                        held = held[:cut]
                        stats.done_reason = "stop"
                        finished = True
                        break
                    keep = _longest_stop_prefix(held, stops)
                    if len(held) > keep:
                        out.append(held[: len(held) - keep])
                        held = held[len(held) - keep :]
                else:
                    out.append(token)
                if limit is not None and consumed >= limit:
                    stats.done_reason = "length"
                    finished = True
                    break
            if finished:
                if held:
                    out.append(held)
                if out:
                    yield out
                return
            if out:
                yield out
        if held:
            yield [held]
    finally:
        stats.eval_count = consumed
        close = getattr(batches, "aclose", None)
        if close is not None:
            await close()


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _longest_stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest tail of `text` that begins some stop sequence."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
