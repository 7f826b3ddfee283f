"""`mirador dna edit`: the user's editor on a copy; only a valid edit replaces the profile.

The editor works on a private copy beside dna.yaml. On save the copy is
validated; an error names the line, the key and the allowed values, and the
user may edit again with their text intact. The old file stays in place until
a valid one replaces it in one atomic rename, with the user's own comments.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from mirador.dna.store import load_file
from mirador.errors import ConfigError, MiradorError, UsageError


def editor_command() -> list[str]:
    raw = os.environ.get("VISUAL") or os.environ.get("EDITOR") or ""
    try:
        command = shlex.split(raw)
    except ValueError:
        raise UsageError(f"$EDITOR ({raw}) cannot be parsed as a command") from None
    if not command:
        raise UsageError("no editor: $EDITOR is not set",
                         hint="export EDITOR=nano (or vim, code --wait …), or change one field with "
                              "`mirador dna set KEY VALUE`")
    return command


def _run_editor(command: list[str], file: Path) -> int:
    try:
        result = subprocess.run([*command, str(file)], check=False)
    except FileNotFoundError:
        raise UsageError(f"the editor '{command[0]}' was not found",
                         hint="set $EDITOR to an installed editor, e.g. export EDITOR=nano") from None
    except OSError as exc:
        raise UsageError(f"the editor '{command[0]}' could not be started: {exc.strerror}") from None
    return result.returncode


def edit_file(path: Path, *, ask_again: Callable[[], bool], report: Callable[[str], None]) -> bool:
    """Edit `path` through $EDITOR; True when a valid, changed profile replaced it."""
    from mirador.yamlfile import write_private_atomically

    command = editor_command()
    original = path.read_text(encoding="utf-8")
    fd, name = tempfile.mkstemp(prefix=".dna.edit-", suffix=".yaml", dir=path.parent)
    copy = Path(name)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(original)
    os.chmod(copy, 0o600)
    keep_copy = False
    try:
        while True:
            status = _run_editor(command, copy)
            text = copy.read_text(encoding="utf-8")
            if status != 0:
                keep_copy = text != original
                raise MiradorError(f"the editor exited with status {status}; {path} was not changed",
                                   hint=f"your edit is kept in {copy}" if keep_copy else None)
            if text == original:
                return False
            try:
                load_file(path, text)
            except ConfigError as exc:
                report(f"mirador: {exc.message}" + (f"\n  hint: {exc.hint}" if exc.hint else ""))
                if ask_again():
                    continue
                keep_copy = True
                raise ConfigError(f"{path} was not changed: the edit is not a valid DNA file",
                                  hint=f"your edit is kept in {copy}; run `mirador dna edit` to start over") from None
            write_private_atomically(path, text)
            return True
    finally:
        if not keep_copy:
            copy.unlink(missing_ok=True)
