"""Loading the capability matrix: the default, the user's overlay, validation, a compiled cache.

The default ships with Mirador (capability_matrix.yaml at the repository root,
reached through mirador/routing/capability_matrix.yaml so an installed package
finds it too). ~/.config/mirador/capability_matrix.yaml overlays it key by key:
mappings merge, anything else (lists included) replaces, null removes.

Parsing ~700 lines of YAML costs about 25 ms with the import, a sixth of the
whole time to first token, so the validated, merged result is cached as JSON
in the data dir, keyed by both files' mtime and size. A broken file is never
cached: the next run reports it again with its file, line and key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mirador.config import Paths, paths
from mirador.errors import ConfigError
from mirador.routing import schema
from mirador.routing.schema import CapabilityMatrix, KeyPath, build_matrix

FILE_NAME = "capability_matrix.yaml"
DEFAULT_MATRIX = Path(__file__).with_name(FILE_NAME)
CACHE_FORMAT = 3


def default_matrix_path() -> Path:
    return DEFAULT_MATRIX.resolve()


def user_matrix_path(p: Paths | None = None) -> Path:
    return (p or paths()).config_dir / FILE_NAME


def cache_path(p: Paths | None = None) -> Path:
    return (p or paths()).data_dir / "cache" / "capability_matrix.json"


class _Overlay:
    """The merged matrix plus, for every key path, which file gave it (for error messages)."""

    def __init__(self, layers: list[Any]):  # LoadedYaml, lowest precedence first
        self.layers = layers
        self.owner: dict[KeyPath, int] = {}
        merged: dict[str, Any] = {}
        for index, layer in enumerate(layers):
            merged = self._merge(merged, layer.data, (), index)
        self.data = merged

    def _merge(self, base: dict[str, Any], top: dict[Any, Any], prefix: KeyPath, index: int) -> dict[str, Any]:
        out = dict(base)
        for raw_key, value in top.items():
            key = str(raw_key)
            path = prefix + (key,)
            if value is None:
                out.pop(key, None)
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = self._merge(out[key], value, path, index)
            else:
                out[key] = _stringify_keys(value)
                self.owner[path] = index
        return out

    def locate(self, path: KeyPath, problem: str, hint: str | None = None) -> ConfigError:
        layer = self.layers[0]
        for end in range(len(path), 0, -1):
            if path[:end] in self.owner:
                layer = self.layers[self.owner[path[:end]]]
                break
        else:
            # A mapping both files touch: blame the top file that mentions the key at all.
            for candidate in reversed(self.layers):
                if candidate.line_of(*path) is not None:
                    layer = candidate
                    break
        return layer.error(path, problem, hint)


def _stringify_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _stringify_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_keys(v) for v in value]
    return value


def _digest(data: dict[str, Any]) -> str:
    import hashlib  # 3 ms of import; only when the files changed

    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stamp(path: Path) -> list[Any]:
    try:
        st = path.stat()
    except OSError:
        return [str(path), None, None]
    return [str(path), st.st_mtime_ns, st.st_size]


def _load_layers(user_file: Path | None, user_text: str | None = None) -> _Overlay:
    from mirador.yamlfile import load_yaml_mapping

    default = default_matrix_path()
    if not default.exists():
        raise ConfigError(f"the default capability matrix is missing: {default}",
                          hint="reinstall Mirador (pip install --force-reinstall mirador)")
    layers = [load_yaml_mapping(default)]
    if user_file is not None and (user_text is not None or user_file.exists()):
        layers.append(load_yaml_mapping(user_file, user_text))
    return _Overlay(layers)


def check_file(file: Path, text: str | None = None) -> CapabilityMatrix:
    """Validate `file` (or `text` as if it were `file`) as an overlay of the default matrix."""
    overlay = _load_layers(file, text)
    return build_matrix(overlay.data, overlay.locate, _digest(overlay.data))


def merged_data(p: Paths | None = None) -> dict[str, Any]:
    """The matrix in effect as plain data (for `mirador matrix show`), validated."""
    overlay = _load_layers(user_matrix_path(p))
    build_matrix(overlay.data, overlay.locate, _digest(overlay.data))
    return overlay.data


def load_matrix(p: Paths | None = None, *, use_cache: bool = True) -> CapabilityMatrix:
    """The matrix in effect: default + user overlay, validated; from the compiled cache when fresh."""
    p = p or paths()
    user = user_matrix_path(p)
    # The validating code is part of the key: a Mirador that checks more re-reads the files.
    key = [CACHE_FORMAT, _stamp(default_matrix_path()), _stamp(user), _stamp(Path(schema.__file__))]
    cache = cache_path(p)
    if use_cache:
        cached = _read_cache(cache, key)
        if cached is not None:
            return cached
    overlay = _load_layers(user)
    digest = _digest(overlay.data)
    matrix = build_matrix(overlay.data, overlay.locate, digest)
    if use_cache:
        _write_cache(cache, {"key": key, "matrix": schema.to_compact(matrix)})
    return matrix


def _read_cache(cache: Path, key: list[Any]) -> CapabilityMatrix | None:
    """The validated matrix from the last load, if both files are unchanged since (no re-validation)."""
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if not isinstance(stored, dict) or stored.get("key") != key:
            return None
        return schema.from_compact(stored["matrix"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # absent, corrupt or from another version: read the files


def _write_cache(cache: Path, payload: dict[str, Any]) -> None:
    from mirador.yamlfile import write_private_atomically

    try:
        cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private_atomically(cache, json.dumps(payload, separators=(",", ":")))
    except OSError:
        pass  # a read-only data dir only costs the next run a parse
