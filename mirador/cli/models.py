"""`mirador models`, `mirador preload`, `mirador unload`: what is installed, loaded, kept warm."""

from __future__ import annotations

import argparse
from typing import Any

from mirador.cli.common import call_server, human_size, print_json_lines, print_table
from mirador.errors import MiradorError, UsageError


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    if command in ("preload", "unload"):
        parser.add_argument("models", nargs="+" if command == "unload" else "*", metavar="MODEL")
    if command == "preload":
        parser.add_argument("--keep-alive", default=None,
                            help="how long to keep them loaded: 10m, 1h, -1 (until unloaded); default from config")
        parser.add_argument("--predict", action="store_true",
                            help="load what this hour usually needs, from your history (for a login hook or cron)")
    if command == "models":
        parser.add_argument("--predict", action="store_true",
                            help="show how likely each model is to be needed now, from your history")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run={"models": run_models, "preload": run_preload, "unload": run_unload}[command])


def run_models(args: argparse.Namespace) -> int:
    from mirador.config import load_settings

    settings = load_settings()
    if args.predict:
        return _show_predictions(args, settings)

    async def fetch(client: Any) -> tuple[list[dict], list[dict]]:
        return await client.tags(), await client.ps()

    installed, loaded = call_server(settings, fetch)
    loaded_by_name = {m.get("name") or m.get("model"): m for m in loaded}
    rows = []
    for model in installed:
        name = model.get("name") or model.get("model")
        running = loaded_by_name.get(name)
        details = model.get("details") or {}
        rows.append({
            "name": name,
            "size": model.get("size"),
            "parameter_size": details.get("parameter_size"),
            "quantization": details.get("quantization_level"),
            "loaded": running is not None,
            "expires_at": running.get("expires_at") if running else None,
            "size_vram": running.get("size_vram") if running else None,
        })
    if args.json:
        print_json_lines(rows)
        return 0
    if not rows:
        print(f"no models installed on {settings.host}; install one with: ollama pull llama3.2:1b")
        return 0
    print_table(
        ["model", "size", "params", "quant", "loaded", "expires"],
        [[r["name"], human_size(r["size"]), r["parameter_size"] or "-", r["quantization"] or "-",
          "yes" if r["loaded"] else "", _expiry(r["expires_at"]) if r["loaded"] else ""] for r in rows],
        title=f"models on {settings.host}",
    )
    return 0


def _expiry(expires_at: str | None) -> str:
    """Ollama reports "forever" as a date centuries away; say so in words."""
    if not expires_at:
        return "-"
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return expires_at
    seconds = (when - datetime.now(UTC)).total_seconds()
    if seconds > 10 * 365 * 86400:
        return "never (pinned)"
    if seconds <= 0:
        return "now"
    if seconds < 120:
        return f"in {seconds:.0f} s"
    if seconds < 7200:
        return f"in {seconds / 60:.0f} min"
    return f"in {seconds / 3600:.1f} h"


def run_preload(args: argparse.Namespace) -> int:
    from mirador.config import load_settings, parse_keep_alive
    from mirador.runtime.pins import pin, unpin

    settings = load_settings()
    if args.predict:
        if args.models or args.keep_alive is not None:
            raise UsageError("--predict chooses the models and how long they stay",
                             hint="mirador preload --predict   or   mirador preload MODEL [--keep-alive 1h]")
        return _preload_predicted(args, settings)
    if not args.models:
        raise UsageError("name the models to load, or --predict", hint="mirador preload llama3.2:1b")
    keep_alive = settings.keep_alive
    if args.keep_alive is not None:
        try:
            keep_alive = parse_keep_alive(args.keep_alive)
        except ValueError as exc:
            raise UsageError(f"--keep-alive {args.keep_alive}: {exc}") from None
    results = _for_each(settings, args.models, lambda client, m: client.preload(m, keep_alive))
    for model, result in results:
        if isinstance(result, MiradorError):
            continue
        # Remember a user-chosen keep_alive so later questions don't shorten it.
        if args.keep_alive is not None:
            pin(settings.paths, model, keep_alive)
        else:
            unpin(settings.paths, model)
    return _report(args, results, "loaded", keep_alive)


def _show_predictions(args: argparse.Namespace, settings: Any) -> int:
    import asyncio

    from mirador.predict.warm import installed_and_loaded, predict

    async def fetch(client: Any) -> Any:
        installed, loaded = await installed_and_loaded(client)
        return await asyncio.to_thread(predict, settings, installed), loaded

    predictions, loaded = call_server(settings, fetch)
    rows = [{"model": p.model, "this_hour": round(p.this_hour, 3), "next_question": round(p.next_question, 3),
             "loaded": p.model in loaded, "preload": p.this_hour >= settings.preload_threshold}
            for p in predictions]
    if args.json:
        print_json_lines(rows)
        return 0
    print_table(["model", "needed this hour", "next question", "loaded", ""],
                [[r["model"], f"{r['this_hour']:.2f}", f"{r['next_question']:.2f}", "yes" if r["loaded"] else "",
                  "preload" if r["preload"] else ""] for r in rows],
                title=f"predicted from your history (preload above {settings.preload_threshold:g})")
    return 0


def _preload_predicted(args: argparse.Namespace, settings: Any) -> int:
    from mirador.predict.warm import warm_predicted
    from mirador.runtime.pins import keep_alive_for, read_pins

    pins = read_pins(settings.paths)

    async def work(client: Any) -> Any:
        return await warm_predicted(client, settings, lambda m, default: keep_alive_for(m, default, pins))

    _, results, why_not = call_server(settings, work)
    if why_not and not args.json:
        print(f"mirador: {why_not}")
    return _report(args, results, "loaded", None) if results else 0


def run_unload(args: argparse.Namespace) -> int:
    from mirador.config import load_settings
    from mirador.runtime.pins import unpin

    settings = load_settings()
    results = _for_each(settings, args.models, lambda client, m: client.unload(m))
    for model, result in results:
        if not isinstance(result, MiradorError):
            unpin(settings.paths, model)
    return _report(args, results, "unloaded", None)


def _for_each(settings: Any, models: list[str], action: Any) -> list[tuple[str, Any]]:
    """Run `action` for every model concurrently; one model's failure doesn't stop the others."""
    import asyncio

    from mirador.errors import RuntimeUnavailable

    async def work(client: Any) -> list[tuple[str, Any]]:
        async def one(model: str) -> Any:
            try:
                return await action(client, model)
            except RuntimeUnavailable:
                raise  # no server: one clear message, not one per model
            except MiradorError as exc:
                return exc

        outcomes = await asyncio.gather(*(one(m) for m in models))
        return list(zip(models, outcomes, strict=True))

    return call_server(settings, work)


def _report(args: argparse.Namespace, results: list[tuple[str, Any]], verb: str, keep_alive: Any) -> int:
    import sys

    exit_code = 0
    rows = []
    for model, result in results:
        if isinstance(result, MiradorError):
            exit_code = exit_code or result.exit_code
            rows.append({"model": model, "ok": False, "error": result.message, "hint": result.hint})
            if not args.json:
                print(f"mirador: {model}: {result.message}", file=sys.stderr)
                if result.hint:
                    print(f"  hint: {result.hint}", file=sys.stderr)
        else:
            row = {"model": model, "ok": True, "done_reason": result.get("done_reason")}
            if keep_alive is not None:
                row["keep_alive"] = keep_alive
            rows.append(row)
            if not args.json:
                load_ms = (result.get("load_duration") or 0) / 1e6
                timing = f" in {load_ms:.0f} ms" if load_ms else ""
                kept = f", kept for {keep_alive}" if keep_alive is not None else ""
                if keep_alive is not None and str(keep_alive).startswith("-"):
                    kept = ", kept until unloaded"
                print(f"{model}: {verb}{timing}{kept}")
    if args.json:
        print_json_lines(rows)
    return exit_code
