"""Entry point of the `mirador` command.

Start-up is part of the product: argparse (not Typer, whose import alone costs
four bare interpreter starts) and a table of commands, so that only the module
of the command being run is imported.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

# command -> (module in mirador.cli, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "ask": ("ask", "ask a question; a chain of models answers in stages"),
    "rate": ("rate", "rate an answer from 1 to 5 (default: the last one); the next similar question learns from it"),
    "route": ("route", "show which models would answer a question, and why, without running them"),
    "matrix": ("matrix", "the capability matrix routing uses: show, validate, path, edit"),
    "history": ("history", "past questions, answers, timings, ratings"),
    "models": ("models", "models installed on the server and loaded in memory"),
    "preload": ("models", "load models now so the next question starts warm"),
    "unload": ("models", "free the memory of loaded models"),
    "shell-hook": ("shellhook", "print a snippet that preloads the predicted models when a shell starts"),
    "doctor": ("doctor", "check the whole set-up and say what to fix"),
    "config": ("config", "show, locate or change settings"),
    "dna": ("dna", "your preference profile: show, edit, set, diff, reset, crossover, preview"),
    "memory": ("memory", "pattern memory: stats, search, forget, export, rebuild"),
    "context": ("context", "show exactly what context later stages would receive"),
    "serve": ("serve", "run the embedded Ollama-compatible server"),
    "energy": ("energy", "power state, energy profile and what each model costs"),
    "train": ("train", "turn the best-rated history into a LoRA adapter; deploy it only if it is better"),
}


def _top_level_help() -> str:
    from mirador import __version__

    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: mirador [--debug] [--version] COMMAND [ARGS…]   (Mirador {__version__})",
        "",
        "The local models of an Ollama server as one personal assistant.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `mirador COMMAND --help` for the options of one command.",
              "Add --debug to see a traceback when something fails."]
    return "\n".join(lines)


def build_command_parser(command: str) -> argparse.ArgumentParser:
    module_name, summary = COMMANDS[command]
    parser = argparse.ArgumentParser(prog=f"mirador {command}", description=summary)
    import_module(f"mirador.cli.{module_name}").configure(command, parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MIRADOR_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help", "help"):
        print(_top_level_help())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from mirador import __version__

        print(f"mirador {__version__}")
        return 0
    command = args[0]
    if command not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(command, COMMANDS, n=1)
        suggestion = f"; did you mean `mirador {close[0]}`?" if close else ""
        print(f"mirador: unknown command '{command}'{suggestion}", file=sys.stderr)
        print("run `mirador --help` for the list of commands", file=sys.stderr)
        return 2
    parser = build_command_parser(command)
    options = parser.parse_args(args[1:])
    return run_reporting_errors(options.run, options, debug)


def run_reporting_errors(run, options, debug: bool) -> int:
    """Run a command; turn failures into one clear message and the exit code DESIGN.md names."""
    from mirador.errors import EXIT_INTERRUPTED, EXIT_USER, MiradorError

    try:
        return int(run(options) or 0)
    except MiradorError as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"mirador: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nmirador: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of our output went away (`mirador ask … | head`): not an error of ours.
        sys.stderr.close()
        return 0
    except Exception as exc:  # the last line of defence against tracebacks
        if debug:
            raise
        print(f"mirador: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("  hint: run again with --debug for the traceback, and report it", file=sys.stderr)
        return EXIT_USER


if __name__ == "__main__":
    sys.exit(main())
