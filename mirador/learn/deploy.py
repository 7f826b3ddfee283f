"""Deployment: hand a trained adapter to the runtime as `<base>-mirador`, keep the previous one for rollback.

Two paths, the same HTTP calls on `mirador serve` and on Ollama, local or not:
- adapter: the GGUF LoRA goes up as a blob (POST /api/blobs/sha256:…) and /api/create
  {"from": base, "adapters": {...}} makes the model;
- fused: for runtimes that refuse ADAPTER (recent Ollama releases, architectures llama.cpp has no
  LoRA for), fuse.py merges the adapter into the base GGUF and /api/create {"files": {...}} imports it,
  with the base's system prompt, template and parameters carried over from its /api/show.
`auto` tries the adapter first and falls back to fused on a refusal; the result says which was used.

Atomic: the candidate is made under a staging name and loaded once (a runtime may accept an adapter
at create and fail when it loads it); only then is it copied over `<base>-mirador` (a manifest copy on
both runtimes) and state.json written. A failure anywhere before leaves the deployed model and
state.json as they were.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from mirador.errors import MiradorError, RuntimeFailure, RuntimeUnavailable

MODES = ("auto", "adapter", "fused")


def deployed_name(base: str) -> str:
    # The planner knows these names too (personalized routing, staging models hidden): one definition.
    from mirador.routing.installed import PERSONAL_SUFFIX

    return f"{base}{PERSONAL_SUFFIX}" if ":" in base else f"{base}:latest{PERSONAL_SUFFIX}"


def staging_name(name: str) -> str:
    """Where a deploy builds and checks its candidate before it replaces `name`."""
    from mirador.routing.installed import STAGING_MARK

    return name + STAGING_MARK


def state_file() -> Path:
    from mirador.config import paths

    return paths().data_dir / "learn" / "state.json"


# -- HTTP -------------------------------------------------------------------------------------------

def _request(host: str, path: str, data: bytes | BinaryIO | None, content_type: str, timeout: float = 600,
             method: str = "POST", length: int | None = None) -> dict[str, Any]:
    headers = {"Content-Type": content_type}
    if length is not None:
        headers["Content-Length"] = str(length)
    req = urllib.request.Request(host.rstrip("/") + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise RuntimeFailure(f"the runtime refused {path}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeUnavailable(f"cannot reach the runtime at {host}: {getattr(exc, 'reason', exc)}",
                                 hint="start it with `mirador serve` (or `ollama serve`), or set OLLAMA_HOST") from None
    try:
        return json.loads(body) if body.strip() else {}
    except ValueError:
        return {}


def _post_json(host: str, path: str, body: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    return _request(host, path, json.dumps(body).encode(), "application/json", timeout)


def has_blob(host: str, digest: str) -> bool:
    try:
        _request(host, f"/api/blobs/sha256:{digest}", None, "application/octet-stream", 30, method="HEAD")
    except RuntimeFailure:
        return False
    return True


def upload_blob(host: str, path: Path) -> str:
    """Push a file as a blob unless the runtime has it; returns its digest "sha256:<hex>".

    Streamed from disk: a fused model is as large as the base, gigabytes for a 7B model."""
    from mirador.learn.gguf_convert import sha256_file

    digest = sha256_file(path)
    if not has_blob(host, digest):
        with path.open("rb") as f:
            _request(host, f"/api/blobs/sha256:{digest}", f, "application/octet-stream",
                     length=path.stat().st_size)
    return f"sha256:{digest}"


def _create(host: str, body: dict[str, Any]) -> None:
    answer = _post_json(host, "/api/create", {**body, "stream": False})
    if answer.get("status") not in (None, "success"):
        raise RuntimeFailure(f"creating {body['model']} did not succeed: {answer}")


def _delete(host: str, name: str) -> None:
    try:
        _request(host, "/api/delete", json.dumps({"model": name}).encode(), "application/json", 60, method="DELETE")
    except MiradorError:
        pass  # a leftover staging model is replaced by the next deploy


def verify_loads(host: str, name: str) -> None:
    """Load the model and produce one token: a runtime may accept an adapter it cannot apply."""
    _post_json(host, "/api/generate", {"model": name, "prompt": "Hi", "stream": False, "keep_alive": 0,
                                       "options": {"num_predict": 1, "temperature": 0}})


# -- the two paths ----------------------------------------------------------------------------------

def create_adapter_model(host: str, base: str, adapter: Path, name: str | None = None) -> str:
    """Upload the adapter and (re)create `name` (default `<base>-mirador`) from `base` with it."""
    digest = upload_blob(host, adapter)
    name = name or deployed_name(base)
    _create(host, {"model": name, "from": base, "adapters": {adapter.name: digest}})
    return name


def base_settings(host: str, base: str) -> dict[str, Any]:
    """The base's system prompt, template and parameters, for a fused model made from files (which
    would otherwise start with none of them)."""
    show = _post_json(host, "/api/show", {"model": base}, 60)
    out: dict[str, Any] = {}
    for key in ("system", "template"):
        if isinstance(show.get(key), str) and show[key].strip():
            out[key] = show[key]
    parameters: dict[str, Any] = {}
    for line in str(show.get("parameters") or "").splitlines():
        key, _, raw = line.strip().partition(" ")
        raw = raw.strip()
        if not key or not raw:
            continue
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if key == "stop":
            parameters.setdefault("stop", []).append(str(value))
        else:
            parameters[key] = value
    if parameters:
        out["parameters"] = parameters
    return out


def create_fused_model(host: str, base: str, base_gguf: Path, adapter: Path, name: str, workdir: Path) -> str:
    """Merge, upload, create `name` from the merged file; returns the fused blob's digest."""
    from mirador.learn.fuse import fuse

    settings = base_settings(host, base)
    fused = fuse(base_gguf, adapter, workdir / "fused.gguf")
    try:
        digest = upload_blob(host, fused)
    finally:
        fused.unlink(missing_ok=True)  # the runtime keeps its own copy as a blob
    _create(host, {"model": name, "files": {"fused.gguf": digest}, **settings})
    return digest


# -- the atomic switch ------------------------------------------------------------------------------

def deploy(host: str, base: str, adapter: Path, stamp: str, *, mode: str = "auto", base_gguf: Path | None = None,
           name: str | None = None, say: Any = None) -> dict[str, Any]:
    """Make `<base>-mirador` serve `adapter` by `mode`; returns {model, path, stamp, refusal?}."""
    if mode not in MODES:
        raise MiradorError(f"unknown deploy mode '{mode}': expected one of {', '.join(MODES)}")
    name = name or deployed_name(base)
    staging = staging_name(name)
    refusal: str | None = None
    path = None
    fused_digest: str | None = None
    try:
        if mode in ("auto", "adapter"):
            try:
                create_adapter_model(host, base, adapter, staging)
                verify_loads(host, staging)
                path = "adapter"
            except RuntimeFailure as exc:
                if mode == "adapter":
                    raise
                refusal = exc.message
                if say:
                    say(f"the runtime refused the adapter ({refusal}); merging it into the base instead")
        if path is None:
            if base_gguf is None:
                from mirador.learn.base_model import locate

                base_gguf = locate(base, host).path
            fused_digest = create_fused_model(host, base, base_gguf, adapter, staging, adapter.parent)
            verify_loads(host, staging)
            path = "fused"
        _post_json(host, "/api/copy", {"source": staging, "destination": name}, 120)
    except MiradorError as exc:
        if refusal and path is None:
            exc.message = f"{exc.message} (the adapter path was refused first: {refusal})"
            exc.args = (exc.message,)
        raise
    finally:
        _delete(host, staging)
    entry = {"stamp": stamp, "adapter": str(adapter), "model": name, "base": base, "path": path,
             "deployed_at": time.time()}
    if fused_digest:
        entry["fused_digest"] = fused_digest
    state = read_state(state_file())
    state.update(previous=state.get("current"), current=entry)
    write_state(state_file(), state)
    return {"model": name, "path": path, "stamp": stamp, "refusal": refusal}


def rollback(host: str) -> dict[str, Any]:
    """Serve the previous adapter again (by the path it was deployed with); current and previous swap."""
    state = read_state(state_file())
    previous, current = state.get("previous"), state.get("current")
    if not previous:
        raise MiradorError("there is no previous adapter to roll back to",
                           hint="`mirador train list` shows the adapters trained so far; `mirador train deploy ID`")
    adapter = Path(previous["adapter"])
    if not adapter.is_file():
        raise MiradorError(f"the previous adapter {adapter} is gone")
    name = previous.get("model") or deployed_name(previous["base"])
    staging = staging_name(name)
    try:
        digest = previous.get("fused_digest")
        if previous.get("path") == "fused" and digest and has_blob(host, digest.removeprefix("sha256:")):
            # The runtime still has the merged file: no need to merge again.
            _create(host, {"model": staging, "files": {"fused.gguf": digest}, **base_settings(host, previous["base"])})
        elif previous.get("path") == "fused":
            from mirador.learn.base_model import locate

            create_fused_model(host, previous["base"], locate(previous["base"], host).path, adapter, staging,
                               adapter.parent)
        else:
            create_adapter_model(host, previous["base"], adapter, staging)
        verify_loads(host, staging)
        _post_json(host, "/api/copy", {"source": staging, "destination": name}, 120)
    finally:
        _delete(host, staging)
    state.update(current={**previous, "deployed_at": time.time()}, previous=current)
    write_state(state_file(), state)
    return previous


def read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged state loses the rollback target, never the deployed model
    return data if isinstance(data, dict) else {}


def write_state(path: Path, state: dict[str, Any]) -> None:
    from mirador.yamlfile import write_private_atomically

    write_private_atomically(path, json.dumps(state, indent=1))
