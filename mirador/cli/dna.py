"""`mirador dna`: show, edit, set, diff, reset, crossover and preview the user's preference profile."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True
    show = sub.add_parser("show", help="your DNA, field by field")
    show.add_argument("--json", action="store_true", help="as one JSON object")
    show.set_defaults(run=run_show)
    edit = sub.add_parser("edit", help="open it in $EDITOR; a broken edit never replaces it")
    edit.set_defaults(run=run_edit)
    setter = sub.add_parser("set", help="change one field, e.g. `dna set verbosity 0.3`")
    setter.add_argument("key", help="a field, e.g. verbosity, preferred_frameworks, format.code_first")
    setter.add_argument("value", help="its new value; lists as a,b,c")
    setter.set_defaults(run=run_set)
    diff = sub.add_parser("diff", help="fields where your DNA and FILE (default: the default profile) differ")
    diff.add_argument("file", nargs="?", type=Path, help="another DNA file")
    diff.add_argument("--json", action="store_true")
    diff.set_defaults(run=run_diff)
    reset = sub.add_parser("reset", help="back to the default profile (the old one is kept as dna.yaml.bak)")
    reset.set_defaults(run=run_reset)
    cross = sub.add_parser("crossover", help="compatibility with another user's DNA; --write saves the blend")
    cross.add_argument("file", type=Path, help="their DNA file")
    cross.add_argument("--write", action="store_true", help="save the blended profile as your DNA")
    cross.add_argument("--json", action="store_true")
    cross.set_defaults(run=run_crossover)
    preview = sub.add_parser("preview", help="exactly what each stage of a chain would receive")
    preview.add_argument("query", nargs="+", help="a question")
    which = preview.add_mutually_exclusive_group()
    which.add_argument("-m", "--model", help="a single-stage chain with this model")
    which.add_argument("--chain", help="comma-separated models, fastest first")
    preview.add_argument("--no-dna", action="store_true", help="what they would receive without your DNA")
    preview.add_argument("--json", action="store_true")
    preview.set_defaults(run=run_preview)
    path = sub.add_parser("path", help="where your DNA file is")
    path.set_defaults(run=lambda args: print(_user_file()) or 0)


def _paths() -> Any:
    from mirador.config import paths

    return paths()


def _user_file() -> Path:
    from mirador.dna.store import user_file

    return user_file(_paths())


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return str(value)


def run_show(args: argparse.Namespace) -> int:
    from mirador.dna.schema import FIELDS
    from mirador.dna.store import load_user

    dna = load_user(_paths())
    if args.json:
        print(json.dumps(dna.to_nested(), ensure_ascii=False))
        return 0
    from mirador.cli.common import print_table

    rows = [[key, _value(dna[key]), FIELDS[key].allowed()] for key in FIELDS]
    print_table(["field", "value", "allowed"], rows, title=f"DNA: {_user_file()}")
    return 0


def _ask_again() -> bool:
    prompt = "Edit again? [Y/n] "
    if sys.stdin is None:
        return False
    if sys.stdin.isatty():
        try:
            answer = input(prompt)
        except EOFError:
            return False
    else:
        print(prompt, end="", file=sys.stderr, flush=True)
        answer = sys.stdin.readline()
        if not answer:
            return False  # no one to answer: stop, and keep the old file
    return answer.strip().lower() in ("", "y", "yes")


def run_edit(args: argparse.Namespace) -> int:
    from mirador.dna.edit import edit_file
    from mirador.dna.store import ensure_user_file

    path = ensure_user_file(_paths())
    changed = edit_file(path, ask_again=_ask_again, report=lambda text: print(text, file=sys.stderr))
    print(f"saved {path}" if changed else f"no change to {path}")
    return 0


def run_set(args: argparse.Namespace) -> int:
    from mirador.dna.schema import parse_value_text
    from mirador.dna.store import load_user, user_file, write

    value = parse_value_text(args.key, args.value)
    p = _paths()
    dna = load_user(p)  # a broken file is reported, never overwritten
    write(user_file(p), dna.replace(**{args.key.replace(".", "__"): value}))
    print(f"{args.key} = {_value(value)}")
    return 0


def _other(file: Path | None) -> tuple[Any, str]:
    from mirador.dna.store import DEFAULT_FILE, load_file

    if file is None:
        return load_file(DEFAULT_FILE), "default"
    return load_file(file), str(file)


def run_diff(args: argparse.Namespace) -> int:
    from mirador.dna.schema import FIELDS
    from mirador.dna.store import load_user

    mine = load_user(_paths())
    theirs, label = _other(args.file)
    changed = [key for key in FIELDS if mine[key] != theirs[key]]
    if args.json:
        print(json.dumps({"against": label, "fields": [{"key": k, "mine": mine[k], label: theirs[k]}
                                                         for k in changed]}, ensure_ascii=False))
        return 0
    if not changed:
        print(f"no difference from {label}")
        return 0
    from mirador.cli.common import print_table

    print_table(["field", "yours", label], [[k, _value(mine[k]), _value(theirs[k])] for k in changed])
    return 0


def run_reset(args: argparse.Namespace) -> int:
    from mirador.dna.store import DEFAULT_FILE, user_file
    from mirador.yamlfile import write_private_atomically

    path = user_file(_paths())
    if path.exists():
        write_private_atomically(path.with_name(path.name + ".bak"), path.read_text(encoding="utf-8",
                                                                                     errors="replace"))
    write_private_atomically(path, DEFAULT_FILE.read_text(encoding="utf-8"))
    print(f"reset {path} to the default profile" + (f" (the old one is in {path.name}.bak)"
                                                      if path.with_name(path.name + ".bak").exists() else ""))
    return 0


def run_crossover(args: argparse.Namespace) -> int:
    from mirador.dna.similarity import blend, compare
    from mirador.dna.store import load_file, load_user, user_file, write

    p = _paths()
    mine = load_user(p)
    theirs = load_file(args.file)
    result = compare(mine, theirs)
    if args.write:
        write(user_file(p), blend(mine, theirs))
    if args.json:
        print(json.dumps({**result.to_dict(), "written": bool(args.write)}, ensure_ascii=False))
        return 0
    from mirador.cli.common import print_table

    rows = [[f.key, _value(f.mine), _value(f.theirs), f.measure, f"{f.similarity:.2f}", f"{f.weight:g}"]
            for f in result.fields]
    print_table(["field", "yours", "theirs", "measure", "similarity", "weight"], rows)
    print(f"compatibility: {result.score * 100:.0f}%")
    if args.write:
        print(f"saved the blended profile to {user_file(p)}")
    return 0


def run_preview(args: argparse.Namespace) -> int:
    from mirador.cli.ask import chosen_models
    from mirador.config import load_settings
    from mirador.dna.apply import DnaShaper
    from mirador.dna.store import load_user
    from mirador.stream.chain import ChainRequest, stage_messages, stage_options, stages_for

    settings = load_settings()
    dna = None if args.no_dna else load_user(settings.paths)
    models = chosen_models(argparse.Namespace(model=args.model, chain=args.chain), settings.chain)
    request = ChainRequest(query=" ".join(args.query), stages=stages_for(models), keep_alive=lambda m: None,
                           options=dict(settings.options), shape=DnaShaper(dna) if dna else None)
    previews = [{"stage": n, "model": s.model, "purpose": s.purpose, "messages": stage_messages(request, s, []),
                 "options": stage_options(request, s)} for n, s in enumerate(request.stages, 1)]
    if args.json:
        for item in previews:
            print(json.dumps(item, ensure_ascii=False))
        return 0
    for item in previews:
        print(f"── stage {item['stage']}/{len(previews)} · {item['model']} · {item['purpose']}")
        print(f"options: {json.dumps(item['options'], ensure_ascii=False)}")
        for message in item["messages"]:
            print(f"[{message['role']}]\n{message['content']}")
        print()
    if len(previews) > 1:
        print("Stages 2 and later also receive the earlier stages' drafts after the question, and the "
              "compiled context (`mirador context \"…\"`) when continuing a conversation.")
    return 0
