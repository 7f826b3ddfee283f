"""Models the user preloaded with a keep_alive of their own.

Mirador always sends keep_alive, and sending the default on a later question
would silently shorten a `mirador preload M --keep-alive -1` (a known pitfall
of Ollama front ends). Preload records the user's choice here; every request
to that model then sends it again. A small JSON file: cheap on the ask path.
"""

from __future__ import annotations

import json
from pathlib import Path

from mirador.config import Paths


def read_pins(p: Paths) -> dict[str, int | float | str]:
    try:
        data = json.loads(p.pins_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def keep_alive_for(model: str, default: int | float | str, pins: dict[str, int | float | str]):
    return pins.get(model, default)


def _write(path: Path, pins: dict) -> None:
    from mirador.yamlfile import write_private_atomically

    write_private_atomically(path, json.dumps(pins, indent=2, sort_keys=True) + "\n")


def pin(p: Paths, model: str, keep_alive: int | float | str) -> None:
    p.ensure_data_dir()
    pins = read_pins(p)
    pins[model] = keep_alive
    _write(p.pins_file, pins)


def unpin(p: Paths, model: str) -> None:
    pins = read_pins(p)
    if pins.pop(model, None) is not None:
        _write(p.pins_file, pins)
