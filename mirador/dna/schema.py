"""The ModelDNA schema: every field, its allowed values, validation and migration.

A DNA file is YAML (see default.yaml beside this module). Validation works on a
`LoadedYaml`, so each error names the file, line and key and says what is
allowed. Keys left out take their default, so a shared file may hold only the
fields its author cares about.

Schema history (bump SCHEMA_VERSION and add a migration when a field changes):
  1  the first shared format: `frameworks`, `expertise`, `pace`, and verbosity
     and technical_depth as levels 1-5.
  2  the current one: the names of DESIGN.md, scales 0-1, language, tone, format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mirador.errors import ConfigError
from mirador.yamlfile import LoadedYaml

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class DnaField:
    key: str  # dotted path, e.g. "format.code_first"
    kind: str  # "scale" (0-1) | "choice" | "list" | "bool" | "text"
    default: Any
    choices: tuple[str, ...] = ()

    def allowed(self) -> str:
        if self.kind == "scale":
            return "a number from 0 to 1"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "list":
            return "a list of names, e.g. [python, fastapi] (or [] for none)"
        if self.kind == "bool":
            return "true or false"
        return "a short text"

    def parse(self, value: Any) -> Any:
        """The validated value; ValueError says what was wrong (the caller adds what is allowed)."""
        if self.kind == "scale":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, found {_describe(value)}")
            if not 0 <= value <= 1:
                raise ValueError(f"{value} is out of range")
            return float(value)
        if self.kind == "choice":
            text = str(value).strip().lower().replace("-", "_") if isinstance(value, str) else None
            if text not in self.choices:
                raise ValueError(f"{_describe(value)} is not an allowed value")
            return text
        if self.kind == "list":
            if value is None:
                return []
            if not isinstance(value, list):
                raise ValueError(f"expected a list, found {_describe(value)}")
            items = []
            for item in value:
                if isinstance(item, (dict, list)) or item is None or not str(item).strip():
                    raise ValueError(f"list entries must be non-empty names, found {_describe(item)}")
                if str(item).strip() not in items:
                    items.append(str(item).strip())
            return items
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, found {_describe(value)}")
            return value
        if not isinstance(value, str) or not value.strip() or "\n" in value.strip():
            raise ValueError(f"expected a one-line text, found {_describe(value)}")
        return value.strip()


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"text '{value}'"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


FIELDS: dict[str, DnaField] = {f.key: f for f in (
    DnaField("reasoning_style", "choice", "systematic", ("systematic", "creative", "analytical")),
    DnaField("verbosity", "scale", 0.5),
    DnaField("technical_depth", "scale", 0.5),
    DnaField("preferred_frameworks", "list", []),
    DnaField("domain_expertise", "list", []),
    DnaField("response_pace", "choice", "deliberate", ("deliberate", "quick")),
    DnaField("evidence_preference", "choice", "data_driven", ("data_driven", "intuitive")),
    DnaField("language", "text", "auto"),
    DnaField("tone", "choice", "neutral", ("neutral", "friendly", "formal", "direct")),
    DnaField("format.structure", "choice", "mixed", ("prose", "bullets", "mixed")),
    DnaField("format.code_first", "bool", False),
    DnaField("format.examples", "bool", True),
)}
GROUPS = {"format"}  # top-level keys that hold a mapping of fields


@dataclass(frozen=True)
class ModelDNA:
    """A validated profile: every field of FIELDS, by dotted key."""

    values: dict[str, Any] = field(default_factory=lambda: {k: _copy(f.default) for k, f in FIELDS.items()})

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def replace(self, **changes: Any) -> ModelDNA:
        """A copy with some fields changed; keys may use '__' for '.' (format__code_first)."""
        values = dict(self.values)
        for key, value in changes.items():
            values[key.replace("__", ".")] = value
        return ModelDNA(values)

    def to_nested(self) -> dict[str, Any]:
        """The YAML/JSON layout: schema_version first, groups as mappings."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for key, value in self.values.items():
            group, _, name = key.partition(".")
            if name:
                out.setdefault(group, {})[name] = _copy(value)
            else:
                out[key] = _copy(value)
        return out


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def default_dna() -> ModelDNA:
    return ModelDNA()


# -- migration --------------------------------------------------------------------------------

def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    renames = {"frameworks": "preferred_frameworks", "expertise": "domain_expertise", "pace": "response_pace"}
    out = {renames.get(key, key): value for key, value in data.items()}
    for key in ("verbosity", "technical_depth"):
        level = out.get(key)
        if isinstance(level, (int, float)) and not isinstance(level, bool) and 1 <= level <= 5:
            out[key] = round((level - 1) / 4, 2)  # levels 1..5 -> 0, 0.25, ... 1
        elif level is not None:
            out[key] = level  # left as it was: validation names the bad value
    return out


MIGRATIONS: dict[int, tuple[Callable[[dict[str, Any]], dict[str, Any]], dict[str, str]]] = {
    # version -> (upgrade to version + 1, old top-level key -> new key, to keep error lines right)
    1: (_v1_to_v2, {"frameworks": "preferred_frameworks", "expertise": "domain_expertise",
                    "pace": "response_pace"}),
}


def _version_of(loaded: LoadedYaml) -> int:
    raw = loaded.data.get("schema_version", SCHEMA_VERSION)  # a hand-written partial file is current
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise loaded.error(("schema_version",), f"expected a whole number from 1 to {SCHEMA_VERSION}, "
                                                f"found {_describe(raw)}")
    if raw > SCHEMA_VERSION:
        raise loaded.error(
            ("schema_version",),
            f"this DNA file uses schema version {raw}, from a newer Mirador; this one reads versions "
            f"1 to {SCHEMA_VERSION}",
            hint="upgrade Mirador to use it (pip install -U mirador); the file was not changed",
        )
    return raw


def migrate(loaded: LoadedYaml) -> LoadedYaml:
    """Bring an older file's data up to SCHEMA_VERSION, keeping the line of every renamed key."""
    version = _version_of(loaded)
    data, lines = dict(loaded.data), dict(loaded.lines)
    while version < SCHEMA_VERSION:
        upgrade, renames = MIGRATIONS[version]
        data = upgrade(data)
        for old, new in renames.items():
            for path in [p for p in lines if p[0] == old]:
                lines[(new, *path[1:])] = lines[path]
        version += 1
    data["schema_version"] = SCHEMA_VERSION
    return LoadedYaml(loaded.path, data, lines)


# -- validation -------------------------------------------------------------------------------

def _unknown(loaded: LoadedYaml, key: tuple[str, ...], known: list[str]) -> ConfigError:
    import difflib  # only when reporting an error: keeps the `ask` path's imports small

    close = difflib.get_close_matches(key[-1], known, n=1)
    hint = (f"did you mean '{close[0]}'? " if close else "") + "known keys: " + ", ".join(known)
    return loaded.error(key, "unknown key", hint=hint)


def parse_dna(loaded: LoadedYaml) -> ModelDNA:
    """Validate a loaded DNA file; every error names file, line, key and the allowed values."""
    if not loaded.data:
        raise ConfigError(f"{loaded.path}: the DNA file is empty",
                          hint="`mirador dna reset` writes the default profile (or delete the file)")
    loaded = migrate(loaded)
    top_known = ["schema_version", *sorted({k.split(".")[0] for k in FIELDS})]
    values = default_dna().values
    for key, value in loaded.data.items():
        key = str(key)
        if key == "schema_version":
            continue
        if key in GROUPS:
            if not isinstance(value, dict):
                raise loaded.error((key,), f"expected a mapping of settings, found {_describe(value)}",
                                   hint="known keys: " + ", ".join(k for k in FIELDS if k.startswith(key + ".")))
            group_known = [k.split(".", 1)[1] for k in FIELDS if k.startswith(key + ".")]
            for name, item in value.items():
                if str(name) not in group_known:
                    raise _unknown(loaded, (key, str(name)), group_known)
                values[f"{key}.{name}"] = _parse_field(loaded, FIELDS[f"{key}.{name}"], item)
        elif key in FIELDS:
            values[key] = _parse_field(loaded, FIELDS[key], value)
        else:
            raise _unknown(loaded, (key,), top_known)
    return ModelDNA(values)


def _parse_field(loaded: LoadedYaml, spec: DnaField, value: Any) -> Any:
    try:
        return spec.parse(value)
    except ValueError as exc:
        raise loaded.error(tuple(spec.key.split(".")), str(exc), hint=f"allowed: {spec.allowed()}") from None


def parse_value_text(key: str, text: str) -> Any:
    """A value typed on the command line (`dna set KEY VALUE`), validated for KEY."""
    spec = FIELDS.get(key)
    if spec is None:
        import difflib

        close = difflib.get_close_matches(key, list(FIELDS), n=1)
        raise ConfigError(f"unknown DNA key '{key}'",
                          hint=(f"did you mean '{close[0]}'? " if close else "") + "keys: " + ", ".join(FIELDS))
    raw: Any = text
    if spec.kind == "scale":
        try:
            raw = float(text)
        except ValueError:
            pass
    elif spec.kind == "bool":
        raw = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}.get(
            text.strip().lower(), text)
    elif spec.kind == "list":
        stripped = text.strip().removeprefix("[").removesuffix("]")
        raw = [part.strip().strip("'\"") for part in stripped.split(",") if part.strip()]
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"DNA key '{key}': {exc}", hint=f"allowed: {spec.allowed()}") from None
