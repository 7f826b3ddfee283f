"""Observation: history's answered exchanges become patterns, and retrieval reads them back.

history.db is the source of truth, so observing is a sync: every exchange
after the last one observed is embedded and upserted (idempotent: a sync
killed half-way is simply redone). `ask` never does this itself: after the
answer is saved it starts a detached `mirador memory sync --background`
process (once the store exists), and `mirador rate` and `mirador memory`
sync before they act, so a pattern is always there when it matters. The
chromadb import (about a second) and the embedding therefore never delay the
first token, nor the shell prompt after the answer.

The domain of a query is the router's (memory sits below routing, so the
caller passes `domain_of` in).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mirador.memory.features import DOCUMENT_CHARS, features, text_for_embedding
from mirador.memory.patterns import MemoryUnavailable, Pattern, PatternStore, location

BATCH = 64
STATE_FILE = Path("memory") / "observed.json"
LOCK_FILE = Path("memory") / "sync.lock"
LOG_FILE = Path("memory") / "sync.log"

DomainOf = Callable[[str], tuple[str, str]]  # query -> (domain, language)


def memory_embedder(settings: Any) -> Any:
    from mirador.memory.embed import get_embedder

    choice = str(getattr(settings, "memory_embedder", "local") or "local")
    return get_embedder(choice)


def open_store(settings: Any, embedder: Any, *, reset_on_mismatch: bool = True) -> PatternStore:
    store = PatternStore.open(settings, embedder.name, reset_on_mismatch=reset_on_mismatch)
    if store.count() == 0:
        _save_upto(settings, 0)  # an empty (new, reset or wiped) store has observed nothing
    return store


def pattern_for(exchange: Any, domain_of: DomainOf) -> Pattern:
    domain, language = domain_of(exchange.prompt)
    return Pattern(exchange_id=exchange.id, query=exchange.prompt[:DOCUMENT_CHARS], domain=domain,
                   models=[s.model for s in exchange.stages], created_at=exchange.created_at,
                   rating=exchange.rating or 0,
                   note=(exchange.ratings[-1].note or "") if exchange.ratings else "",
                   features=features(exchange.prompt, language))


def sync(settings: Any, domain_of: DomainOf, *, full: bool = False, store: PatternStore | None = None,
         embedder: Any = None) -> int:
    """Observe every answered exchange not yet in the store; returns how many patterns were written."""
    from mirador.history import HistoryStore

    embedder = embedder or memory_embedder(settings)
    with _locked(settings):
        store = store or open_store(settings, embedder)
        if full:
            store.reset()
        upto = 0 if full else _load_upto(settings)
        written = 0
        with HistoryStore(settings.paths.history_db) as history:
            batch: list[Pattern] = []
            last = upto
            for exchange in history.iter_exchanges(after_id=upto):
                last = exchange.id
                if not exchange.final_text:
                    continue  # nothing was answered: nothing to learn from or offer
                batch.append(pattern_for(exchange, domain_of))
                if len(batch) >= BATCH:
                    written += _write(store, embedder, batch)
                    _save_upto(settings, last)
                    batch = []
            written += _write(store, embedder, batch)
            _save_upto(settings, last)
    return written


def _write(store: PatternStore, embedder: Any, batch: list[Pattern]) -> int:
    if not batch:
        return 0
    texts = [text_for_embedding(p.query)[0] for p in batch]
    result = embedder.embed(texts)
    for pattern, cut in zip(batch, result.truncated, strict=True):
        if cut:
            pattern.features["truncated_for_embedding"] = True
    store.upsert(batch, result.vectors)
    return len(batch)


def similar(settings: Any, query: str, k: int = 8, *, min_rating: int = 0,
            embedder: Any = None, store: PatternStore | None = None) -> list[Any]:
    """The k past queries nearest this one (patterns.Hit), optionally only the well-rated ones."""
    embedder = embedder or memory_embedder(settings)
    store = store or PatternStore.open(settings, embedder.name)
    if store.count() == 0:
        return []
    vector = embedder.embed([text_for_embedding(query)[0]]).vectors[0]
    return store.similar(vector, k, min_rating=min_rating)


def spawn_background_sync(settings: Any) -> subprocess.Popen | None:
    """Start `mirador memory sync --background` detached: it outlives this process and never
    writes to the terminal (its errors go to data/memory/sync.log)."""
    log = Path(settings.paths.data_dir) / LOG_FILE
    try:
        log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(log, "ab") as err:
            return subprocess.Popen([sys.executable, "-m", "mirador", "memory", "sync", "--background"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, close_fds=True)
    except OSError:
        return None  # the next rate or memory command catches up


def _state_path(settings: Any) -> Path:
    return Path(settings.paths.data_dir) / STATE_FILE


def _load_upto(settings: Any) -> int:
    try:
        data = json.loads(_state_path(settings).read_text(encoding="utf-8"))
        return int(data.get(location(settings), 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _save_upto(settings: Any, upto: int) -> None:
    path = _state_path(settings)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[location(settings)] = int(upto)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(settings: Any) -> Iterator[None]:
    """One writer at a time per data dir: two syncs would embed the same exchanges twice."""
    path = Path(settings.paths.data_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a+b") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass  # no flock (Windows): upserts are idempotent, the cost is duplicate work
        yield


__all__ = ["MemoryUnavailable", "memory_embedder", "open_store", "pattern_for", "similar",
           "spawn_background_sync", "sync"]
