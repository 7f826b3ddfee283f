"""`mirador memory stats | search TEXT | forget ID | forget --before DATE | export FILE | rebuild`.

history.db is the source of truth: `forget` deletes from history (its full-text
index included), from the pattern store and from the learner's table;
`rebuild` re-embeds everything from history into a fresh store.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from mirador.errors import MiradorError, UsageError


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    stats = sub.add_parser("stats", help="how many patterns, ratings and learned scores")
    stats.add_argument("--json", action="store_true")
    search = sub.add_parser("search", help="past questions most similar to TEXT")
    search.add_argument("text", nargs="+")
    search.add_argument("-k", "--limit", type=int, default=5)
    search.add_argument("--json", action="store_true")
    forget = sub.add_parser("forget", help="delete an exchange (or all before a date) from history and memory")
    forget.add_argument("id", nargs="?", help="the exchange id")
    forget.add_argument("--before", metavar="DATE", help="every exchange before this date (YYYY-MM-DD[THH:MM])")
    export = sub.add_parser("export", help="write every pattern as JSON lines to FILE (- for stdout)")
    export.add_argument("file")
    sub.add_parser("rebuild", help="re-embed everything from history.db into a fresh store")
    sync = sub.add_parser("sync", help="observe the exchanges not yet in memory (ask starts this by itself)")
    sync.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(run=run_memory)


def domain_of_for(settings: Any) -> Callable[[str], tuple[str, str]]:
    """The router's fast classifier as the memory's (domain, language) of a query."""
    try:
        from mirador.routing.classify import classify_fast
        from mirador.routing.matrix import load_matrix

        matrix = load_matrix(settings.paths)
    except MiradorError:
        return lambda query: ("unknown", "unknown")  # a broken matrix must not block a rating

    def domain_of(query: str) -> tuple[str, str]:
        analysis = classify_fast(query, matrix)
        return analysis.domain, analysis.language

    return domain_of


def memory_warning(exc: MiradorError, consequence: str = "memory is off for this command") -> None:
    hint = f" ({exc.hint})" if exc.hint else ""
    print(f"mirador: warning: {exc.message}; {consequence}{hint}", file=sys.stderr)


def run_memory(args: argparse.Namespace) -> int:
    from mirador.config import load_settings

    settings = load_settings()
    action = args.action
    if action == "forget":
        return _forget(settings, args)
    if not settings.memory_enabled and action != "sync":
        raise MiradorError("pattern memory is switched off", hint="mirador config set memory_enabled true")
    if action == "sync":
        return _sync(settings, args.background)
    if action == "rebuild":
        return _rebuild(settings)
    store, embedder = _synced(settings)
    if action == "stats":
        return _stats(settings, store, args.json)
    if action == "search":
        return _search(settings, store, embedder, " ".join(args.text), args.limit, args.json)
    return _export(store, args.file)


def _synced(settings: Any) -> tuple[Any, Any]:
    from mirador.memory.observe import memory_embedder, open_store, sync

    embedder = memory_embedder(settings)
    store = open_store(settings, embedder)
    sync(settings, domain_of_for(settings), store=store, embedder=embedder)
    return store, embedder


def _sync(settings: Any, background: bool) -> int:
    if not settings.memory_enabled:
        return 0
    try:
        _synced(settings)
    except MiradorError as exc:
        if background:  # detached from the terminal: the log keeps one line, the next command retries
            print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} sync failed: {exc.message}", file=sys.stderr)
            return 1
        raise
    return 0


def _rebuild(settings: Any) -> int:
    from mirador.history import HistoryStore
    from mirador.memory.learner import RatingTable
    from mirador.memory.observe import memory_embedder, open_store, sync
    from mirador.memory.patterns import MemoryUnavailable, location, wipe_local

    started = time.perf_counter()
    embedder = memory_embedder(settings)
    try:
        store = open_store(settings, embedder)
    except MemoryUnavailable:
        if settings.memory_url:
            raise
        wipe_local(settings)  # too damaged to open, let alone reset: history has everything it held
        store = open_store(settings, embedder)
    domain_of = domain_of_for(settings)
    written = sync(settings, domain_of, full=True, store=store, embedder=embedder)
    table = RatingTable.load(settings.paths)
    table.entries = {}
    with HistoryStore.open_default() as history:
        for exchange in history.iter_exchanges():
            if exchange.rating is not None:
                table.record(exchange.id, domain_of(exchange.prompt)[0], exchange.models, exchange.rating)
    table.save()
    print(f"rebuilt pattern memory at {location(settings)}: {written} patterns from history "
          f"({embedder.name}, {time.perf_counter() - started:.1f} s)")
    return 0


def _stats(settings: Any, store: Any, as_json: bool) -> int:
    from mirador.memory.learner import RatingTable

    table = RatingTable.load(settings.paths)
    domains: dict[str, int] = {}
    rated = 0
    for pattern in store.all():
        domains[pattern.domain] = domains.get(pattern.domain, 0) + 1
        rated += pattern.rating > 0
    scores = sorted(((d, m, ev.score()) for (d, m), ev in table.evidence().items() if ev.score() is not None),
                    key=lambda row: (row[0], -row[2]))
    report = {"location": store.where, "embedder": store.embedder, "patterns": store.count(), "rated": rated,
              "well_rated": table.well_rated(), "domains": domains,
              "scores": [{"domain": d, "model": m, "score": round(s, 3)} for d, m, s in scores]}
    if as_json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
        return 0
    print(f"pattern memory: {report['patterns']} patterns, {rated} rated ({report['well_rated']} rated 4–5)")
    print(f"  store: {store.where}   embedder: {store.embedder}")
    if domains:
        print("  by domain: " + ", ".join(f"{d} {n}" for d, n in sorted(domains.items(), key=lambda x: -x[1])))
    if scores:
        print("  learned scores (domain · model · 0..1, 0.5 = no opinion):")
        for d, m, s in scores:
            print(f"    {d} · {m} · {s:.2f}")
    else:
        print("  no learned scores yet: rate an answer with `mirador rate 1-5`")
    return 0


def _search(settings: Any, store: Any, embedder: Any, text: str, limit: int, as_json: bool) -> int:
    from mirador.memory.observe import similar

    if limit < 1:
        raise UsageError("--limit must be at least 1")
    hits = similar(settings, text, limit, embedder=embedder, store=store)
    if as_json:
        for hit in hits:
            p = hit.pattern
            sys.stdout.write(json.dumps({"id": p.exchange_id, "similarity": round(hit.similarity, 4),
                                         "rating": p.rating or None, "domain": p.domain, "models": p.models,
                                         "query": p.query[:200]}, ensure_ascii=False) + "\n")
        return 0
    if not hits:
        print("no patterns yet: answers are remembered as you ask (and rate) them")
        return 0
    for hit in hits:
        p = hit.pattern
        stars = f"{p.rating}/5" if p.rating else "unrated"
        first = p.query.strip().splitlines()[0][:80] if p.query.strip() else ""
        print(f"#{p.exchange_id}  {hit.similarity:.2f}  {stars:7}  {p.domain:18}  {first}")
    return 0


def _export(store: Any, target: str) -> int:
    from dataclasses import asdict

    out = sys.stdout if target == "-" else open(target, "w", encoding="utf-8")  # noqa: SIM115
    count = 0
    try:
        for pattern in store.all():
            out.write(json.dumps(asdict(pattern), ensure_ascii=False) + "\n")
            count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    if target != "-":
        print(f"exported {count} patterns to {target}")
    return 0


def _forget(settings: Any, args: argparse.Namespace) -> int:
    from mirador.history import HistoryStore
    from mirador.memory.learner import RatingTable

    if (args.id is None) == (args.before is None):
        raise UsageError("forget one exchange by id, or every exchange --before a date",
                         hint="mirador memory forget 12   or   mirador memory forget --before 2024-01-31")
    with HistoryStore.open_default() as history:
        if args.id is not None:
            from mirador.cli.rate import parse_id

            ids = [parse_id(args.id)]
            if history.get(ids[0]) is None:
                raise MiradorError(f"there is no exchange with id {ids[0]}", hint="`mirador history` lists the ids")
        else:
            cutoff = _parse_date(args.before)
            ids = [e.id for e in history.iter_exchanges() if e.created_at < cutoff]
        for exchange_id in ids:
            history.delete_exchange(exchange_id)  # its full-text row goes with it
    table = RatingTable.load(settings.paths)
    if table.forget(ids):
        table.save()
    if settings.memory_enabled and ids:
        _forget_patterns(settings, ids)
    print(f"forgot {len(ids)} exchange{'s' if len(ids) != 1 else ''} (history, search index and memory)")
    return 0


def _forget_patterns(settings: Any, ids: list[int]) -> None:
    from mirador.memory.observe import memory_embedder
    from mirador.memory.patterns import MemoryUnavailable, PatternStore, exists

    if not exists(settings):
        return
    try:
        PatternStore.open(settings, memory_embedder(settings).name, reset_on_mismatch=True).delete(ids)
    except MemoryUnavailable as exc:
        memory_warning(exc, "history forgot them; the next `mirador memory rebuild` drops them from memory")


def _parse_date(text: str) -> float:
    try:
        return datetime.fromisoformat(text.strip()).timestamp()  # local time, as `mirador history` shows
    except ValueError:
        raise UsageError(f"'{text}' is not a date", hint="use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
