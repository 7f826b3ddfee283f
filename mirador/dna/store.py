"""Where DNA files live, how they are read (fast on the `ask` path) and written.

The user's profile is ~/.config/mirador/dna.yaml, created from the default on
first use of `mirador dna`. `mirador ask` reads it on every question, so the
validated profile is also kept as JSON beside the history, keyed by the YAML
file's mtime and size: a warm load is one stat and one small JSON read, with
no PyYAML import (about 18 ms on its own).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from mirador.config import Paths
from mirador.dna.schema import FIELDS, SCHEMA_VERSION, ModelDNA, parse_dna
from mirador.errors import ConfigError

DEFAULT_FILE = Path(__file__).with_name("default.yaml")  # shipped inside the package
CACHE_NAME = "dna.cache.json"


def user_file(p: Paths) -> Path:
    return p.config_dir / "dna.yaml"


def load_file(path: Path, text: str | None = None) -> ModelDNA:
    """Read and validate any DNA file (the user's, a shared one, an edited copy)."""
    from mirador.yamlfile import load_yaml_mapping

    if text is None and not path.exists():
        raise ConfigError(f"{path}: no such DNA file")
    return parse_dna(load_yaml_mapping(path, text))


def ensure_user_file(p: Paths) -> Path:
    """The user's DNA file, written from the default profile if it does not exist yet."""
    path = user_file(p)
    if not path.exists():
        from mirador.yamlfile import write_private_atomically

        write_private_atomically(path, DEFAULT_FILE.read_text(encoding="utf-8"))
    return path


def load_user(p: Paths) -> ModelDNA:
    """The user's profile (created from the default on first use); errors name line and key."""
    return load_file(ensure_user_file(p))


def load_for_ask(p: Paths) -> ModelDNA | None:
    """The profile `ask` applies, or None when the user has none yet; cheap when nothing changed."""
    path = user_file(p)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    key = [stat.st_mtime_ns, stat.st_size, SCHEMA_VERSION, str(path)]
    cache = p.data_dir / CACHE_NAME
    try:
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("key") == key and set(cached.get("values", {})) == set(FIELDS):
            return ModelDNA(cached["values"])
    except (OSError, ValueError, AttributeError):
        pass  # no cache, or a stale or damaged one: rebuild it
    dna = load_file(path)
    try:
        from mirador.yamlfile import write_private_atomically

        p.ensure_data_dir()
        write_private_atomically(cache, json.dumps({"key": key, "values": dna.values}))
    except OSError:
        pass  # a read-only data dir only costs the next start the YAML parse
    return dna


# -- writing ----------------------------------------------------------------------------------

_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w]*):(\s*)(\S.*)?$")


def _flow(value: Any) -> str:
    """One value in YAML flow style, e.g. 0.5, true, [python, fastapi], auto."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def render(dna: ModelDNA) -> str:
    """The documented default file with this profile's values: the user's copy keeps the comments."""
    lines = DEFAULT_FILE.read_text(encoding="utf-8").splitlines()
    group = ""
    out = []
    for line in lines:
        match = _KEY_LINE.match(line)
        if match and not line.lstrip().startswith("#"):
            indent, name, space, value = match.groups()
            if not indent:
                group = name if value is None else ""
            key = f"{group}.{name}" if indent and group else name
            if key in FIELDS:
                line = f"{indent}{name}:{space or ' '}{_flow(dna[key])}"
            elif key == "schema_version":
                line = f"{indent}{name}:{space or ' '}{SCHEMA_VERSION}"
        out.append(line)
    return "\n".join(out) + "\n"


def write(path: Path, dna: ModelDNA) -> None:
    from mirador.yamlfile import write_private_atomically

    text = render(dna)
    load_file(path, text)  # never write a file Mirador itself could not read back
    write_private_atomically(path, text)


def cache_file(p: Paths) -> Path:
    return p.data_dir / CACHE_NAME


def forget_cache(p: Paths) -> None:
    try:
        os.unlink(cache_file(p))
    except FileNotFoundError:
        pass
