"""`mirador train [status|list|rollback] [--dry-run] …`: the best-rated history as a LoRA adapter.

`mirador train` builds the dataset from exchanges rated 4–5, trains a LoRA on the very GGUF the
runtime serves, deploys it as `<base>-mirador` only if the held-out loss improved and the sanity
prompts stay coherent. Safe to run from cron (see mirador/learn/pipeline.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mirador.errors import UsageError


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="run", choices=("run", "status", "list", "rollback"),
                        help="run (default): train and deploy; status, list, rollback")
    parser.add_argument("--dry-run", action="store_true", help="show the dataset (counts, dates, domains) and stop")
    parser.add_argument("--base", default="smollm2:135m", help="the runtime model to train on (default: %(default)s)")
    parser.add_argument("--gguf", type=Path, help="the base model's GGUF file (default: from the runtime's store)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "mlx"),
                        help="auto (default): mlx on Apple Silicon, torch elsewhere")
    parser.add_argument("--min-examples", type=int, default=20, help="do nothing below this many (default: 20)")
    parser.add_argument("--max-minutes", type=float, default=60.0, help="training time budget (default: 60)")
    parser.add_argument("--margin", type=float, default=0.01,
                        help="fraction the held-out loss must fall by to deploy (default: 0.01)")
    parser.add_argument("--no-deploy", action="store_true", help="train and validate, but do not deploy")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--layers", type=int, default=0, help="LoRA on the last N blocks (0: all)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="the result as one JSON object")
    parser.set_defaults(run=run_train)


def _options(args: argparse.Namespace) -> Any:
    from mirador.config import load_settings
    from mirador.learn.pipeline import TrainOptions
    from mirador.learn.trainers.base import Hyperparams

    for flag in ("rank", "iterations", "max_seq_len", "batch_size"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.max_minutes <= 0:
        raise UsageError("--lr and --max-minutes must be positive")
    hp = Hyperparams(rank=args.rank, alpha=args.alpha, layers=args.layers, lr=args.lr, iterations=args.iterations,
                     max_seq_len=args.max_seq_len, batch_size=args.batch_size)
    return TrainOptions(base=args.base, host=load_settings().host, backend=args.backend,
                        min_examples=args.min_examples, max_minutes=args.max_minutes, margin=args.margin,
                        gguf=args.gguf, deploy=not args.no_deploy, hp=hp)


def _show(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=1, default=str))
    elif isinstance(data, dict):
        for key, value in data.items():
            print(f"{key}: {value}")
    else:
        for row in data:
            print("  ".join(f"{k}={v}" for k, v in row.items()))


def run_train(args: argparse.Namespace) -> int:
    from mirador.learn import pipeline

    if args.action == "status":
        _show(pipeline.status(), args.json)
        return 0
    if args.action == "list":
        rows = pipeline.list_adapters()
        if rows or args.json:
            _show(rows, args.json)
        else:
            print("no adapters trained yet")
        return 0
    options = _options(args)
    if args.action == "rollback":
        back = pipeline.rollback(options.host)
        print(f"rolled back: {back['model']} uses the adapter of {back['stamp']} again")
        return 0
    from mirador.history import HistoryStore

    with HistoryStore.open_default() as history:
        if args.dry_run:
            _show(pipeline.dry_run(history, options), args.json)
            return 0
        say = (lambda _text: None) if args.json else print
        report = pipeline.run(history, options, say)
    if args.json:
        _show(report, True)
    elif report["outcome"] in ("deployed", "validated", "rejected"):
        print(f"loss {report['losses'][0]:.3f} -> {report['losses'][-1]:.3f} in {report['steps']} steps, "
              f"{report['tokens_per_s']:.0f} tokens/s; held-out {report['valid_before']:.4f} -> "
              f"{report['valid_after']:.4f}")
        print({"deployed": f"deployed as {options.base}-mirador", "validated": "validated, not deployed (--no-deploy)",
               "rejected": f"not deployed: {report['validation']['reason']}"}[report["outcome"]])
    return 0
