"""The pattern store: every answered question as a vector in ChromaDB, with what it led to.

One pattern per exchange in history (id = the exchange id): the query as the
document, its embedding, and metadata (rating, domain, the chain of models,
timestamp, features). ChromaDB runs embedded (PersistentClient under the data
dir's chroma/) unless `memory_url` names a Chroma server.

ChromaDB is imported inside `PatternStore.open` (about a second): nothing on
the path to `ask`'s first token imports this module's dependencies. Vectors are
always passed in; the collection has no embedding function, since Chroma's
default one downloads a model at run time. The embedder's name is recorded in
the collection's metadata, and a store written by another embedder is rebuilt
rather than mixed (mirador.memory.observe).

history.db is the source of truth: anything here can be rebuilt from it.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mirador.errors import MiradorError

COLLECTION = "mirador_patterns"
REBUILD_HINT = "rebuild it from history with: mirador memory rebuild"


class MemoryUnavailable(MiradorError):
    """The pattern store cannot be opened or used (corrupt directory, server down, ...)."""


class EmbedderChanged(MemoryUnavailable):
    """The store holds vectors of another embedder: it must be rebuilt, never mixed."""


@dataclass
class Pattern:
    exchange_id: int
    query: str  # the document (possibly cut, see features["document_truncated"])
    domain: str
    models: list[str]
    created_at: float
    rating: int = 0  # 0: not rated yet; otherwise the latest rating, 1..5
    note: str = ""
    features: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        # Chroma metadata values are scalars: the chain is joined (model names never hold a comma).
        meta: dict[str, Any] = {"exchange_id": self.exchange_id, "domain": self.domain,
                                "models": ",".join(self.models), "final_model": self.models[-1] if self.models else "",
                                "created_at": float(self.created_at), "rating": int(self.rating),
                                "note": self.note or ""}
        meta.update({f"f_{key}": value for key, value in self.features.items()})
        return meta

    @classmethod
    def from_chroma(cls, document: str | None, meta: dict[str, Any]) -> Pattern:
        return cls(exchange_id=int(meta.get("exchange_id", 0)), query=document or "",
                   domain=str(meta.get("domain", "")),
                   models=[m for m in str(meta.get("models", "")).split(",") if m],
                   created_at=float(meta.get("created_at", 0.0)), rating=int(meta.get("rating", 0)),
                   note=str(meta.get("note", "")),
                   features={k[2:]: v for k, v in meta.items() if k.startswith("f_")})


@dataclass
class Hit:
    pattern: Pattern
    similarity: float  # cosine similarity, 1.0 = the same direction


def chroma_dir(settings: Any) -> Path:
    return Path(settings.paths.data_dir) / "chroma"


def location(settings: Any) -> str:
    """Where the store lives, in words: the server's URL or the directory."""
    url = getattr(settings, "memory_url", "") or ""
    return url or str(chroma_dir(settings))


def exists(settings: Any) -> bool:
    """Whether there is a store to read (cheap: a stat, no import). A server is assumed to exist."""
    return bool(getattr(settings, "memory_url", "")) or (chroma_dir(settings) / "chroma.sqlite3").exists()


class PatternStore:
    def __init__(self, client: Any, collection: Any, embedder: str, where: str):
        self._client = client
        self._collection = collection
        self.embedder = embedder
        self.where = where

    @classmethod
    def open(cls, settings: Any, embedder: str, *, create: bool = True,
             reset_on_mismatch: bool = False) -> PatternStore:
        """Open (or create) the store for vectors of `embedder`. Every failure is a MemoryUnavailable.

        A store of another embedder raises EmbedderChanged, or with reset_on_mismatch is emptied
        (the caller then re-embeds history into it)."""
        where = location(settings)
        try:
            client = _client(settings)
            collection = client.get_or_create_collection(
                COLLECTION, embedding_function=None,
                metadata={"hnsw:space": "cosine", "embedder": embedder}) if create else \
                client.get_collection(COLLECTION, embedding_function=None)
        except MiradorError:
            raise
        except Exception as exc:  # chromadb raises many kinds (sqlite, Rust bindings, HTTP): all mean "not usable"
            raise MemoryUnavailable(f"pattern memory at {where} cannot be opened: {_short(exc)}",
                                    hint=REBUILD_HINT) from exc
        recorded = (collection.metadata or {}).get("embedder")
        store = cls(client, collection, embedder, where)
        if recorded and recorded != embedder:
            if reset_on_mismatch:
                store.reset()
                return store
            raise EmbedderChanged(f"pattern memory at {where} holds vectors of {recorded}, not {embedder}",
                                  hint=REBUILD_HINT)
        return store

    # -- writing ---------------------------------------------------------------------------------

    def upsert(self, patterns: Sequence[Pattern], vectors: Any) -> None:
        if not patterns:
            return
        self._call(self._collection.upsert, ids=[str(p.exchange_id) for p in patterns],
                   embeddings=[list(map(float, v)) for v in vectors], documents=[p.query for p in patterns],
                   metadatas=[p.metadata() for p in patterns])

    def set_rating(self, exchange_id: int, rating: int, note: str | None = None) -> bool:
        """Record the latest rating on a pattern; False when the pattern is not in the store."""
        if not self.has(exchange_id):
            return False
        meta: dict[str, Any] = {"rating": int(rating)}
        if note is not None:
            meta["note"] = note
        self._call(self._collection.update, ids=[str(exchange_id)], metadatas=[meta])
        return True

    def delete(self, exchange_ids: Sequence[int]) -> None:
        if exchange_ids:
            self._call(self._collection.delete, ids=[str(i) for i in exchange_ids])

    def reset(self) -> None:
        """Drop every pattern (and a previous embedder's settings) and start an empty collection."""
        try:
            self._client.delete_collection(COLLECTION)
        except Exception:  # noqa: BLE001 - not there is fine: we recreate it either way
            pass
        self._collection = self._call(self._client.create_collection, COLLECTION, embedding_function=None,
                                      metadata={"hnsw:space": "cosine", "embedder": self.embedder})

    # -- reading ---------------------------------------------------------------------------------

    def count(self) -> int:
        return int(self._call(self._collection.count))

    def has(self, exchange_id: int) -> bool:
        return bool(self._call(self._collection.get, ids=[str(exchange_id)], include=[])["ids"])

    def get(self, exchange_id: int) -> Pattern | None:
        got = self._call(self._collection.get, ids=[str(exchange_id)], include=["documents", "metadatas"])
        if not got["ids"]:
            return None
        return Pattern.from_chroma(got["documents"][0], got["metadatas"][0])

    def similar(self, vector: Any, k: int = 8, *, min_rating: int = 0) -> list[Hit]:
        """The k nearest patterns, optionally only those rated at least `min_rating`."""
        total = self.count()
        if total == 0:
            return []
        where = {"rating": {"$gte": int(min_rating)}} if min_rating > 0 else None
        got = self._call(self._collection.query, query_embeddings=[list(map(float, vector))],
                         n_results=min(k, total), where=where, include=["documents", "metadatas", "distances"])
        return [Hit(Pattern.from_chroma(doc, meta), 1.0 - float(dist))
                for doc, meta, dist in zip(got["documents"][0], got["metadatas"][0], got["distances"][0],
                                           strict=True)]

    def vectors(self, exchange_ids: Sequence[int]) -> dict[int, tuple[list[float], int]]:
        """exchange id -> (its stored vector, its latest rating), for the ids the store holds."""
        if not exchange_ids:
            return {}
        got = self._call(self._collection.get, ids=[str(i) for i in exchange_ids],
                         include=["embeddings", "metadatas"])
        return {int(i): (list(map(float, vector)), int((meta or {}).get("rating", 0)))
                for i, vector, meta in zip(got["ids"], got["embeddings"], got["metadatas"], strict=True)}

    def all(self, batch: int = 1000) -> Iterator[Pattern]:
        offset = 0
        while True:
            got = self._call(self._collection.get, include=["documents", "metadatas"], limit=batch, offset=offset)
            if not got["ids"]:
                return
            for doc, meta in zip(got["documents"], got["metadatas"], strict=True):
                yield Pattern.from_chroma(doc, meta)
            offset += len(got["ids"])

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MiradorError:
            raise
        except Exception as exc:  # a store that breaks mid-use is as unavailable as one that never opened
            raise MemoryUnavailable(f"pattern memory at {self.where} failed: {_short(exc)}",
                                    hint=REBUILD_HINT) from exc


def _client(settings: Any) -> Any:
    # numpy first, on its own: `ask` retrieves in a worker thread while the router may be importing
    # numpy in another, and chromadb's import reaching numpy's submodules half-way through that one
    # fails with a circular-import error. Waiting for the whole numpy import first cannot cycle.
    importlib.import_module("numpy")

    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=True)
    url = getattr(settings, "memory_url", "") or ""
    if url:
        parts = urlsplit(url)
        return chromadb.HttpClient(host=parts.hostname or "127.0.0.1",
                                   port=parts.port or (443 if parts.scheme == "https" else 8000),
                                   ssl=parts.scheme == "https", settings=chroma_settings)
    folder = chroma_dir(settings)
    settings.paths.ensure_data_dir()
    if folder.exists() and not folder.is_dir():
        raise MemoryUnavailable(f"pattern memory at {folder} is not a directory", hint=REBUILD_HINT)
    folder.mkdir(mode=0o700, exist_ok=True)
    return chromadb.PersistentClient(path=str(folder), settings=chroma_settings)


def wipe_local(settings: Any) -> None:
    """Remove the embedded store's directory (a corrupt one cannot even be opened to be reset)."""
    folder = chroma_dir(settings)
    try:  # chromadb keeps one system per path in this process, a failed one included: drop it
        from chromadb.api.client import SharedSystemClient

        SharedSystemClient.clear_system_cache()
    except Exception:  # noqa: BLE001 - an older or newer chromadb without the cache: nothing to drop
        pass
    if folder.is_dir():
        shutil.rmtree(folder)
    elif folder.exists():
        folder.unlink()


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
