"""YAML files the user edits: load with line numbers for errors, write atomically.

Every user-edited file (config.yaml, capability_matrix.yaml, dna.yaml) goes
through here so that a broken file always names its path, line and key, and a
write never leaves a half-written file behind.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirador.errors import ConfigError


@dataclass
class LoadedYaml:
    """A parsed YAML mapping plus the line (1-based) of every key path in it."""

    path: Path
    data: dict[str, Any]
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    def line_of(self, *key: str) -> int | None:
        """Line of the deepest known prefix of `key`, so an error can always point somewhere."""
        for end in range(len(key), 0, -1):
            if key[:end] in self.lines:
                return self.lines[key[:end]]
        return None

    def error(self, key: tuple[str, ...], problem: str, hint: str | None = None) -> ConfigError:
        line = self.line_of(*key)
        where = f"{self.path}, line {line}" if line else str(self.path)
        return ConfigError(f"{where}, key '{'.'.join(key)}': {problem}", hint=hint)


def _record_lines(node: Any, prefix: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (str(key_node.value),)
            lines[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            key = prefix + (str(index),)
            lines[key] = item.start_mark.line + 1
            _record_lines(item, key, lines)


def load_yaml_mapping(path: Path, text: str | None = None) -> LoadedYaml:
    """Parse a YAML file that must hold a mapping; an empty file is an empty mapping."""
    import yaml

    try:
        source = path.read_text(encoding="utf-8") if text is None else text
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        node = yaml.compose(source, Loader=loader)
        data = yaml.load(source, Loader=loader)
    except yaml.YAMLError as exc:
        raise _syntax_error(path, source, exc) from exc
    if data is None:
        return LoadedYaml(path, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}, line 1: expected a mapping of keys to values, found {type(data).__name__}")
    lines: dict[tuple[str, ...], int] = {}
    _record_lines(node, (), lines)
    return LoadedYaml(path, data, lines)


def _syntax_error(path: Path, source: str, exc: Exception) -> ConfigError:
    """Name the line where the broken construct starts and the key it belongs to."""
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    mark = context_mark or problem_mark
    if mark is None:
        return ConfigError(f"{path}: YAML syntax error: {exc}")
    line = mark.line + 1
    key = _key_at_or_before(source, mark.line)
    problem = getattr(exc, "problem", None) or "invalid YAML"
    if context_mark and problem_mark and problem_mark.line != context_mark.line:
        problem += f" (noticed at line {problem_mark.line + 1})"
    where = f"{path}, line {line}" + (f", key '{key}'" if key else "")
    return ConfigError(f"{where}: YAML syntax error: {problem}",
                       hint="fix that line; Mirador did not change the file")


def _key_at_or_before(source: str, line_index: int) -> str | None:
    import re

    lines = source.splitlines()
    for text in reversed(lines[: line_index + 1]):
        match = re.match(r"^\s*([A-Za-z_][\w.-]*)\s*:", text)
        if match:
            return match.group(1)
    return None


def write_private_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, owner-only, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
