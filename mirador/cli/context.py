"""`mirador context "query"`: exactly what compiled context the later stages of a chain would receive."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError, UsageError


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="+", help="the question the context is compiled for")
    parser.add_argument("--cid", type=int, help="the conversation (default: the last one, as `ask -c` continues)")
    parser.add_argument("--budget", type=int, help="tokens for the whole context (default: the context_budget "
                                                   "setting, 2048)")
    parser.add_argument("-m", "--model", help="count tokens as this model would (default: the chain's last)")
    parser.add_argument("--tokenizer", type=Path, metavar="FILE", help="count with this tokenizer.json")
    parser.add_argument("--summarise", metavar="MODEL",
                        help="let this small model summarise the older turns (default: extractive)")
    parser.add_argument("--no-dna", action="store_true", help="leave your DNA out")
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(run=run_context)


def _history(settings: Any, cid: int | None) -> tuple[int | None, list[dict[str, str]]]:
    db = settings.paths.history_db
    if cid is None and not db.exists():
        return None, []
    from mirador.history import HistoryStore

    store = HistoryStore(db)
    try:
        if cid is not None:
            if not db.exists() or not store.conversation_exists(cid):
                raise MiradorError(f"no conversation with id {cid}",
                                   hint="`mirador history` lists exchanges and their conversations")
        else:
            cid = store.last_conversation_id()
            if cid is None:
                return None, []
        return cid, store.conversation_messages(cid)
    finally:
        store.close()


def run_context(args: argparse.Namespace) -> int:
    from mirador.config import load_settings
    from mirador.context.service import compile_now, make_inputs
    from mirador.dna.store import load_for_ask

    settings = load_settings()
    query = " ".join(args.query).strip()
    if not query:
        raise UsageError("no query", hint='mirador context "what should I pack?"')
    budget = args.budget if args.budget is not None else int(settings.context_budget)
    cid, history = _history(settings, args.cid)
    dna = None if args.no_dna else load_for_ask(settings.paths)
    model = args.model or settings.chain[-1]
    inputs = make_inputs(query, history, dna, settings)
    compiled = compile_now(inputs, settings, budget=budget, model=model, summarise_with=args.summarise,
                           tokenizer_file=args.tokenizer)
    if args.json:
        print(json.dumps({"query": query, "conversation_id": cid, "model": model, **compiled.to_dict()},
                         ensure_ascii=False))
        return 0
    kept = len(next((p.items for p in compiled.parts if p.name == "history"), []))
    print(f"context for the later stages of a chain ending in {model}"
          + (f", conversation {cid}" if cid is not None else ", no conversation yet"))
    print(f"budget {budget} tokens · used {compiled.tokens} (counted with {compiled.counter}) · "
          f"history {compiled.history_tokens} tokens in {compiled.history_points} points, {kept} kept · "
          f"scored with {compiled.embedder} in {compiled.compile_ms:.0f} ms")
    if not compiled.parts:
        print("\n(nothing to send: no DNA, constraints or earlier turns)")
    for part in compiled.parts:
        print(f"\n── {part.name} ({part.tokens} tokens)")
        print(part.text)
    return 0
