"""`mirador train [status|list|rollback|deploy ID] [--dry-run|--schedule] …`: the best-rated history as a LoRA.

`mirador train` builds the dataset from exchanges rated 4–5, trains a LoRA on the very GGUF the
runtime serves, deploys it as `<base>-mirador` only if the held-out loss improved and the sanity
prompts stay coherent, as an adapter or, where the runtime refuses adapters, merged into the base
(`--deploy-as`); the outcome says which. Safe to run from cron (see mirador/learn/pipeline.py);
`--schedule` prints the crontab line for that.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError, UsageError


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="run", choices=("run", "status", "list", "rollback", "deploy"),
                        help="run (default): train and deploy; status, list, rollback, deploy ID")
    parser.add_argument("id", nargs="?", help="for deploy: the adapter's stamp, as `mirador train list` shows it")
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
    parser.add_argument("--deploy-as", choices=("auto", "adapter", "fused"), default="auto",
                        help="adapter: /api/create with ADAPTER; fused: merge it into the base GGUF; auto "
                             "(default): the adapter, merged if the runtime refuses it")
    parser.add_argument("--schedule", action="store_true",
                        help="print a crontab line (and on macOS a launchd plist) for a nightly run; installs nothing")
    parser.add_argument("--quiet", action="store_true",
                        help="print only errors and the outcome line (for cron; the log has the rest)")
    parser.add_argument("--judge", metavar="MODEL",
                        help="a larger installed model compares base and adapted answers on the held-out prompts "
                             "and reports a win rate (stored with the adapter's metrics)")
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
                        gguf=args.gguf, deploy=not args.no_deploy, deploy_as=args.deploy_as, hp=hp,
                        judge=args.judge, progress="quiet" if args.quiet or args.json else "auto")


def _show(data: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=1, default=str))
    elif isinstance(data, dict):
        for key, value in data.items():
            print(f"{key}: {value}")
    else:
        for row in data:
            print("  ".join(f"{k}={v}" for k, v in row.items()))


def _deployed_text(result: dict[str, Any]) -> str:
    how = {"adapter": "as an adapter on its base", "fused": "merged into its base (fused GGUF)"}[result["path"]]
    text = f"deployed as {result['model']}, {how}"
    return text + (f"; the runtime refused the adapter: {result['refusal']}" if result.get("refusal") else "")


def run_train(args: argparse.Namespace) -> int:
    from mirador.learn import pipeline

    if args.id is not None and args.action != "deploy":
        raise UsageError(f"unexpected argument '{args.id}'", hint="only `mirador train deploy ID` takes an ID")
    if args.schedule:
        from mirador.learn.schedule import log_file, schedule_text

        log_file().parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # cron's >> needs the folder
        print(schedule_text(), end="")
        return 0
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
    if args.action == "deploy":
        result = _deploy_listed(args, options)
        if args.json:
            _show(result, True)
        elif not args.quiet:
            print(_deployed_text(result))
        return 0
    from mirador.history import HistoryStore

    with HistoryStore.open_default() as history:
        if args.dry_run:
            _show(pipeline.dry_run(history, options), args.json)
            return 0
        say = (lambda _text: None) if args.json or args.quiet else print
        report = pipeline.run(history, options, say)
    if args.json:
        _show(report, True)
        return 0
    if report["outcome"] in ("deployed", "validated", "rejected") and not args.quiet:
        print(f"loss {report['losses'][0]:.3f} -> {report['losses'][-1]:.3f} in {report['steps']} steps, "
              f"{report['tokens_per_s']:.0f} tokens/s; held-out {report['valid_before']:.4f} -> "
              f"{report['valid_after']:.4f}")
        if report.get("judge"):
            j = report["judge"]
            print(f"judge {j['model']}: adapted answers win {j['win_rate']:.0%} of {j['prompts']} held-out prompts "
                  f"({j['wins']} won, {j['ties']} tied, {j['losses']} lost; both orders asked)")
    if report["outcome"] == "deployed":  # the outcome line, also under --quiet
        print(_deployed_text({"model": report.get("model"), "path": report.get("deploy_path", "adapter"),
                              "refusal": report.get("refusal")}))
    else:
        print(report["summary"])
    return 0


def _deploy_listed(args: argparse.Namespace, options: Any) -> dict[str, Any]:
    """`mirador train deploy ID`: an adapter trained earlier becomes `<base>-mirador`; the one it replaces
    stays the rollback target."""
    from mirador.learn import pipeline

    if not args.id:
        raise UsageError("deploy needs the adapter's ID", hint="`mirador train list` shows them")
    rows = {row["stamp"]: row for row in pipeline.list_adapters()}
    row = rows.get(args.id)
    if row is None:
        known = ", ".join(sorted(rows)[-5:]) or "none yet"
        raise MiradorError(f"no adapter '{args.id}'", hint=f"`mirador train list` shows them (latest: {known})")
    run_dir = pipeline.learn_dir() / "adapters" / args.id
    adapter = Path(row["adapter"]) if row.get("adapter") else run_dir / "adapter.gguf"
    if not adapter.is_file():
        raise MiradorError(f"adapter {args.id} has no exported adapter file ({row.get('outcome')}: it did not pass "
                           "validation, or the run was stopped before export)")
    try:  # the base it was trained on (runs before the base was recorded: --base)
        base = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))["base"]
    except (OSError, ValueError, KeyError, TypeError):
        base = options.base
    return pipeline.deploy(options.host, base, adapter, args.id, mode=options.deploy_as, base_gguf=options.gguf,
                           say=None if args.json or args.quiet else print)
