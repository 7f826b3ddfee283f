"""Deployment: hand a GGUF LoRA to the runtime as `<base>-mirador`, keep the previous one for rollback.

The adapter goes up as a blob (POST /api/blobs/sha256:…) and the model is made with /api/create
{"from": base, "adapters": {...}}: the same two calls work on `mirador serve` and on Ollama, local
or not. The server swaps the model in one manifest write, and state.json changes only after the
server said success, so a run killed at any point leaves the deployed model as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mirador.errors import RuntimeFailure, RuntimeUnavailable


def deployed_name(base: str) -> str:
    return f"{base}-mirador" if ":" in base else f"{base}:latest-mirador"


def _request(host: str, path: str, data: bytes, content_type: str, timeout: float = 300) -> dict[str, Any]:
    req = urllib.request.Request(host.rstrip("/") + path, data=data, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise RuntimeFailure(f"the runtime refused {path}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeUnavailable(f"cannot reach the runtime at {host}: {getattr(exc, 'reason', exc)}",
                                 hint="start it with `mirador serve` (or `ollama serve`), or set OLLAMA_HOST") from None
    try:
        return json.loads(body) if body.strip() else {}
    except ValueError:
        return {}


def create_adapter_model(host: str, base: str, adapter: Path, name: str | None = None) -> str:
    """Upload the adapter and (re)create `name` (default `<base>-mirador`) from `base` with it."""
    data = adapter.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _request(host, f"/api/blobs/{digest}", data, "application/octet-stream")
    name = name or deployed_name(base)
    body = {"model": name, "from": base, "adapters": {adapter.name: digest}, "stream": False}
    answer = _request(host, "/api/create", json.dumps(body).encode(), "application/json")
    if answer.get("status") not in (None, "success"):
        raise RuntimeFailure(f"creating {name} did not succeed: {answer}")
    return name


def read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged state loses the rollback target, never the deployed model
    return data if isinstance(data, dict) else {}


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    os.replace(tmp, path)
