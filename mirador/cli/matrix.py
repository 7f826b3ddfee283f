"""`mirador matrix show | validate [FILE] | path | edit`: the capability matrix routing uses."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from mirador.errors import ConfigError, UsageError

EDIT_HEADER = """\
# Your capability matrix: it overlays Mirador's default key by key.
# Keep only what you change; a key set to null removes it. The default, for reference:
#   {default}
# Examples:
#   domains:
#     coding:
#       chain:
#         - {{step: understanding, needs: [fast], best: qwen2.5-coder-1.5b, confidence: 0.6,
#            reason: my favourite small coder, alternatives: [llama3.2-1b]}}
#         - {{step: implementation, needs: [coding], best: qwen2.5-coder-7b, confidence: 0.85,
#            reason: good enough for me, alternatives: [llama3.1-8b]}}
#   models:
#     my-model:
#       params_b: 8
#       context: 32768
#       strengths: [general, writing]
#       tags: ["my-model:latest"]
"""


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    show = sub.add_parser("show", help="the matrix in effect: each domain's chain, best model and alternatives")
    show.add_argument("--json", action="store_true", help="the merged matrix as JSON")
    show.add_argument("--full", action="store_true", help="the merged matrix as YAML, every key")
    validate = sub.add_parser("validate", help="check a matrix file (default: yours) on top of the default")
    validate.add_argument("file", nargs="?", type=Path, help="the file to check (default: your overlay)")
    sub.add_parser("path", help="where the default and your overlay live")
    sub.add_parser("edit", help="edit your overlay in $EDITOR; kept only if it validates")
    parser.set_defaults(run=run_matrix, action=None)


def run_matrix(args: argparse.Namespace) -> int:
    action = args.action or "show"
    if action == "show":
        return _show(args)
    if action == "validate":
        return _validate(args.file)
    if action == "path":
        return _path()
    if action == "edit":
        return _edit()
    raise UsageError(f"unknown action '{action}'", hint="mirador matrix show | validate [FILE] | path | edit")


def _show(args: argparse.Namespace) -> int:
    from mirador.routing.matrix import merged_data

    data = merged_data()
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        return 0
    if getattr(args, "full", False):
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110))
        return 0
    from mirador.routing.matrix import load_matrix

    matrix = load_matrix()
    for domain in matrix.domains.values():
        print(f"{domain.name}: {domain.description}")
        for number, step in enumerate(domain.chain, 1):
            alternatives = ", ".join(step.alternatives) or "none"
            print(f"  {number}. {step.name:<20} {step.best:<20} confidence {step.confidence:.2f}  "
                  f"then: {alternatives}")
        print()
    print(f"{len(matrix.models)} models, {len(matrix.domains)} domains; below confidence "
          f"{matrix.min_confidence:.2f} a query goes to {matrix.fallback_domain}. "
          "`mirador matrix show --full` prints every key.")
    return 0


def _validate(file: Path | None) -> int:
    from mirador.routing.matrix import check_file, user_matrix_path

    target = file or user_matrix_path()
    if not target.exists():
        if file is not None:
            raise ConfigError(f"{target} does not exist")
        print(f"no overlay at {target}: the default matrix is in effect")
        target = None
    if target is None:
        from mirador.routing.matrix import load_matrix

        matrix = load_matrix(use_cache=False)
    else:
        matrix = check_file(target)
    what = f"{target}" if target else "the default matrix"
    print(f"{what} is valid: {len(matrix.domains)} domains, {len(matrix.models)} models")
    return 0


def _path() -> int:
    from mirador.routing.matrix import default_matrix_path, user_matrix_path

    user = user_matrix_path()
    print(f"default: {default_matrix_path()}")
    print(f"yours:   {user}{'' if user.exists() else '  (not created yet: mirador matrix edit)'}")
    return 0


def _editor() -> list[str]:
    for variable in ("VISUAL", "EDITOR"):
        value = os.environ.get(variable, "").strip()
        if value:
            return shlex.split(value)
    return ["vi"]


def _edit() -> int:
    import tempfile

    from mirador.routing.matrix import check_file, default_matrix_path, user_matrix_path
    from mirador.yamlfile import write_private_atomically

    user = user_matrix_path()
    rejected = user.with_name(user.name + ".rejected")
    original = user.read_text(encoding="utf-8") if user.exists() else EDIT_HEADER.format(
        default=default_matrix_path())
    start = original
    if rejected.exists():
        print(f"resuming your last rejected edit ({rejected}); {user} is unchanged until it validates",
              file=sys.stderr)
        start = rejected.read_text(encoding="utf-8")
    user.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(prefix="capability_matrix.", suffix=".yaml", dir=user.parent)
    copy = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(start)
    editor = _editor()
    try:
        code = subprocess.call([*editor, str(copy)])
    except OSError as exc:
        copy.unlink(missing_ok=True)
        raise UsageError(f"cannot start the editor '{editor[0]}': {exc.strerror}",
                         hint="set $EDITOR, e.g. EDITOR=nano mirador matrix edit") from None
    edited = copy.read_text(encoding="utf-8")
    if code != 0:
        copy.unlink(missing_ok=True)
        raise UsageError(f"the editor exited with status {code}; {user} was not changed")
    if edited == original:
        copy.unlink(missing_ok=True)
        print(f"no change; {user} is as it was")
        return 0
    try:
        check_file(user, edited)
    except ConfigError as exc:
        os.replace(copy, rejected)
        raise ConfigError(
            exc.message.replace(str(user), str(rejected), 1),
            hint=f"{user} is unchanged; your edit is kept at {rejected} and `mirador matrix edit` "
                 f"reopens it (check it any time: mirador matrix validate {rejected})",
        ) from None
    copy.unlink(missing_ok=True)
    write_private_atomically(user, edited)
    rejected.unlink(missing_ok=True)
    print(f"saved {user}")
    return 0
