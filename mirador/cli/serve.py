"""`mirador serve`: run the embedded Ollama-compatible server."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from mirador.errors import ConfigError, RuntimeUnavailable, UsageError


@dataclass
class EngineSetup:
    """An engine and the server settings its configuration asks for (command-line flags win)."""

    engine: Any
    max_loaded: int | None = None
    max_queue: int | None = None
    record: Path | None = None


def _scripted(args: argparse.Namespace) -> EngineSetup:
    from mirador.runtime.engines.scripted import ScriptedEngine, load_script

    script = load_script(args.script)
    return EngineSetup(ScriptedEngine(script), script.max_loaded_models, script.max_queue, script.record)


def _llama_cpp(args: argparse.Namespace) -> EngineSetup:
    if args.script is not None:
        raise UsageError("--script belongs to --engine scripted")
    try:
        module = import_module("mirador.runtime.engines.llama_cpp")
        return EngineSetup(module.create_engine(args))
    except ModuleNotFoundError as exc:
        raise RuntimeUnavailable(
            f"the llama.cpp engine needs the package '{exc.name}'",
            hint="install it with: pip install 'mirador[serve]'",
        ) from None


# engine name -> factory; a new engine module plugs in here with `create_engine(args) -> Engine`.
ENGINES: dict[str, Callable[[argparse.Namespace], EngineSetup]] = {
    "llama_cpp": _llama_cpp,
    "scripted": _scripted,
}


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=["models"],
                        help="models: list the model store (no server is started)")
    parser.add_argument("--json", action="store_true", help="with `models`: one JSON object per model")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; the API has no authentication)")
    parser.add_argument("--port", type=int, default=11434, help="port to listen on (0 = any free port)")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="llama_cpp",
                        help="llama_cpp: real inference; scripted: deterministic, for tests and benchmarks")
    parser.add_argument("--script", type=Path, metavar="FILE",
                        help="JSON script of the scripted engine's models (default: built-in models)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="llama.cpp threads per model (default: half the CPU cores)")
    parser.add_argument("--max-loaded", type=int, metavar="N",
                        help="models kept in memory at once (default 3)")
    parser.add_argument("--max-queue", type=int, metavar="N",
                        help="requests that may wait before the server answers 503 (default 512)")
    parser.set_defaults(run=run)


def list_models(args: argparse.Namespace) -> int:
    """`mirador serve models`: the model store, read without starting a server or loading llama.cpp."""
    import json

    from mirador.runtime.store import ModelStore, StoreError

    try:
        store = ModelStore().open()
        rows = []
        for info in store.model_infos():
            model = store.require(info.name)
            rows.append({"name": info.name, "size": info.size, "family": info.family,
                         "parameter_size": info.parameter_size, "quantization": info.quantization_level,
                         "adapter": model.adapter, "system": model.system, "parameters": model.parameters,
                         "path": model.gguf, "digest": info.digest, "parent": model.parent})
    except StoreError as exc:
        raise ConfigError(exc.message, hint=exc.hint) from None
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no models in {store.root} (import one with /api/create, or `pull smollm2:135m`)")
        return 0
    table = [["NAME", "SIZE", "FAMILY", "PARAMS", "QUANT", "ADAPTER", "PATH"]]
    table += [[r["name"], _size(r["size"]), r["family"], r["parameter_size"], r["quantization"],
               Path(r["adapter"]).name if r["adapter"] else "-", r["path"]] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import asyncio

    if args.action == "models":
        return list_models(args)

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 0 to 65535")
    for flag, value in (("--max-loaded", args.max_loaded), ("--max-queue", args.max_queue),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: expected a positive number")
    setup = ENGINES[args.engine](args)
    host = args.host.strip("[]")
    if not _is_loopback(host):
        print(f"mirador serve: warning: listening on {host}, beyond this machine; "
              "the API has no authentication, so anyone who can reach it can use your models",
              file=sys.stderr, flush=True)
    shown = f"[{host}]" if ":" in host else host

    def announce(port: int) -> None:
        print(f"mirador serve: listening on http://{shown}:{port} (engine {args.engine})", flush=True)

    from mirador.runtime.server import serve

    asyncio.run(serve(
        setup.engine,
        host,
        args.port,
        max_loaded=args.max_loaded or setup.max_loaded or 3,
        max_queue=args.max_queue or setup.max_queue or 512,
        record=setup.record,
        on_listening=announce,
    ))
    return 0
