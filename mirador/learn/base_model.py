"""Which GGUF file the runtime serves for the base model, so the adapter is trained on the weights users run.

Asked in this order, first answer wins:
1. the runtime itself: POST /api/show; its `modelfile` starts `FROM <path>` (Ollama names its blob,
   /usr/share/ollama/.ollama/models/blobs/sha256-…; `mirador serve` names the GGUF it loads). Taken
   when that path is a readable file on this machine (a remote runtime's path is not);
2. Ollama's models directory (OLLAMA_MODELS, ~/.ollama/models, /usr/share/ollama/.ollama/models):
   manifests/<host>/<namespace>/<model>/<tag> is JSON whose layer of mediaType
   application/vnd.ollama.image.model names the blob blobs/sha256-<hex>; no server needed;
3. the embedded runtime's store (runtime/store.py).
The sha256 comes along when it is known without reading the file (a blob's name is its digest; the
store caches digests by path, size and mtime), so the conversion cache need not hash gigabytes again.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mirador.errors import MiradorError

MODEL_LAYER = "application/vnd.ollama.image.model"
_BLOB_NAME = re.compile(r"^sha256[-:]([0-9a-f]{64})$")
DEFAULT_REGISTRY, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"


@dataclass(frozen=True)
class BaseWeights:
    path: Path
    digest: str | None  # sha256 hex when known without hashing
    source: str  # "given", "runtime", "ollama", "store": where it was found (said to the user)


class BaseNotInstalled(MiradorError):
    """No GGUF for the base model was found anywhere Mirador knows to look."""


def locate(base: str, host: str | None, gguf: Path | None = None) -> BaseWeights:
    """The base model's GGUF: `gguf` if given, else the runtime, Ollama's folder, the embedded store."""
    if gguf is not None:
        path = Path(gguf).expanduser()
        if not _readable(path):
            raise MiradorError(f"--gguf {path}: no readable file there")
        return BaseWeights(path, digest_from_name(path), "given")
    looked: list[str] = []
    if host:
        found = from_runtime(base, host, looked)
        if found is not None:
            return found
    for root in ollama_model_dirs():
        found = from_ollama_dir(base, root)
        if found is not None:
            return found
        looked.append(f"Ollama's models folder {root}")
    found = from_store(base)
    if found is not None:
        return found
    looked.append("the embedded runtime's store (mirador serve)")
    raise BaseNotInstalled(
        f"base model {base} is not installed (looked in: {'; '.join(looked)})",
        hint=f"install it with `ollama pull {base}`, or use one of `mirador serve`'s models "
             f"(`mirador models`), or give its file with --gguf")


def digest_from_name(path: Path) -> str | None:
    match = _BLOB_NAME.match(path.name)
    return match.group(1) if match else None


def _readable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.R_OK)


# -- 1. the runtime -------------------------------------------------------------------------------

def from_runtime(base: str, host: str, looked: list[str]) -> BaseWeights | None:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(host.rstrip("/") + "/api/show", method="POST",
                                     data=json.dumps({"model": base}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            show = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        looked.append(f"the runtime at {host} (it answered {exc.code}: it has no {base})")
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        looked.append(f"the runtime at {host} (not reachable: {getattr(exc, 'reason', exc)})")
        return None
    path = from_modelfile(show.get("modelfile") if isinstance(show, dict) else None)
    if path is None:
        looked.append(f"the runtime at {host} (its /api/show names no FROM file)")
        return None
    if not _readable(path):
        looked.append(f"the runtime at {host} (it serves {path}, which is not readable here)")
        return None
    return BaseWeights(path, digest_from_name(path) or store_digest(path), "runtime")


def from_modelfile(modelfile: object) -> Path | None:
    """The absolute path of the first FROM line (a model name there means: not a file)."""
    if not isinstance(modelfile, str):
        return None
    for line in modelfile.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].upper() == "FROM":
            value = words[1].strip().strip('"')
            path = Path(value).expanduser()
            return path if path.is_absolute() else None
    return None


# -- 2. Ollama's models folder --------------------------------------------------------------------

def ollama_model_dirs() -> list[Path]:
    """Where Ollama keeps models: OLLAMA_MODELS if set (then only there, as Ollama itself does), else the
    user's and the Linux service's folders."""
    configured = os.environ.get("OLLAMA_MODELS")
    if configured:
        return [Path(configured).expanduser()]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def manifest_path(root: Path, name: str) -> Path:
    """manifests/<host>/<namespace>/<model>/<tag> for `[host/][namespace/]model[:tag]`, as Ollama lays it out."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    model_part, tag = (name.rsplit(":", 1) if ":" in last else (name, DEFAULT_TAG))
    parts = model_part.split("/")
    if len(parts) == 1:
        parts = [DEFAULT_REGISTRY, DEFAULT_NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [DEFAULT_REGISTRY, *parts]
    return root.joinpath("manifests", *parts, tag)


def from_ollama_dir(base: str, root: Path) -> BaseWeights | None:
    manifest = manifest_path(root, base)
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    layers = data.get("layers") if isinstance(data, dict) else None
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("mediaType") == MODEL_LAYER:
            match = _BLOB_NAME.match(str(layer.get("digest", "")))
            if match is None:
                return None
            blob = root / "blobs" / f"sha256-{match.group(1)}"
            return BaseWeights(blob, match.group(1), "ollama") if _readable(blob) else None
    return None


# -- 3. the embedded store ------------------------------------------------------------------------

def from_store(base: str) -> BaseWeights | None:
    from mirador.runtime.store import ModelStore, StoreError

    try:
        model = ModelStore().open().get(base)
    except StoreError:
        return None
    if model is None or not _readable(Path(model.gguf)):
        return None
    path = Path(model.gguf)
    return BaseWeights(path, digest_from_name(path) or store_digest(path), "store")


def store_digest(path: Path) -> str | None:
    """The sha256 the embedded store cached for this file, if its size and mtime still match."""
    from mirador.config import paths

    try:
        files = json.loads((paths().data_dir / "models" / "manifest.json").read_text(encoding="utf-8"))["files"]
        entry = files[str(path)]
        stat = path.stat()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        digest = entry.get("sha256")
        return digest if isinstance(digest, str) and len(digest) == 64 else None
    return None
