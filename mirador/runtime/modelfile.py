"""What POST /api/create asks for, in either of Ollama's forms, turned into a StoredModel.

The current JSON form: {"model", "from", "files"?: {name: digest}, "adapters"?: {name: digest},
"system"?, "template"?, "parameters"?}; files and adapters are blobs uploaded first with
POST /api/blobs/sha256:<digest>. The legacy form: {"model", "modelfile": "FROM …\\nADAPTER …"}.
FROM names a model of the store or an absolute path to a GGUF file on this machine.
Templates are Jinja chat templates (like a GGUF's tokenizer.chat_template); Ollama's Go
templates are a different language and are refused with a clear message.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirador.runtime.engines.base import full_name
from mirador.runtime.engines.chat_template import TemplateError, compile_template, looks_like_go_template
from mirador.runtime.store import ModelStore, StoredModel, StoreError

# Ollama's options and their types (api/types.go Options and Runner).
_INT = {"num_ctx", "num_predict", "top_k", "seed", "repeat_last_n", "num_keep", "num_batch", "num_gpu",
        "num_thread", "main_gpu", "mirostat"}
_FLOAT = {"temperature", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
          "frequency_penalty", "mirostat_tau", "mirostat_eta", "tfs_z"}
_BOOL = {"penalize_newline", "use_mmap", "use_mlock", "numa", "low_vram", "f16_kv", "vocab_only"}
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")


@dataclass
class CreateSpec:
    source: str | None = None  # FROM: a model name or a GGUF path
    files: dict[str, str] = field(default_factory=dict)  # file name -> digest
    adapters: list[tuple[str, str]] = field(default_factory=list)  # ("blob", digest) or ("path", path)
    system: str | None = None
    template: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def parse_digest(text: str) -> str:
    match = _DIGEST.match(text.strip().lower()) if isinstance(text, str) else None
    if not match:
        raise StoreError(f"invalid digest '{text}': expected sha256:<64 hex digits>")
    return match.group(1)


def coerce_parameter(key: str, value: Any) -> Any:
    """One PARAMETER, typed as Ollama types it; StoreError for an unknown name or a bad value."""
    try:
        if key == "stop":
            values = value if isinstance(value, list) else [value]
            return [str(v) for v in values]
        if key in _INT:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if key in _FLOAT:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if key in _BOOL:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError
    except (TypeError, ValueError):
        raise StoreError(f"invalid value for parameter '{key}': {value!r}") from None
    raise StoreError(f"unknown parameter '{key}'")


def add_parameters(into: dict[str, Any], given: dict[str, Any]) -> None:
    for key, value in given.items():
        typed = coerce_parameter(key, value)
        if key == "stop":
            into["stop"] = [*into.get("stop", []), *typed]
        else:
            into[key] = typed


def spec_from_json(body: dict[str, Any]) -> CreateSpec:
    if isinstance(body.get("modelfile"), str) and body["modelfile"].strip():
        spec = parse_modelfile(body["modelfile"])
    else:
        spec = CreateSpec()
    if body.get("quantize"):
        raise StoreError("quantize is not supported by mirador serve: quantize the GGUF with llama.cpp first")
    if body.get("from") is not None:
        if not isinstance(body["from"], str) or not body["from"].strip():
            raise StoreError("from: expected a model name or a GGUF path")
        spec.source = body["from"].strip()
    for key in ("files", "adapters"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise StoreError(f"{key}: expected an object of file name -> sha256 digest")
        if key == "files":
            spec.files.update(value)
        else:
            spec.adapters += [("blob", digest) for digest in value.values()]
    for key in ("system", "template"):
        if body.get(key) is not None:
            if not isinstance(body[key], str):
                raise StoreError(f"{key}: expected a string")
            setattr(spec, key, body[key])
    if body.get("parameters") is not None:
        if not isinstance(body["parameters"], dict):
            raise StoreError("parameters: expected an object")
        params = {k: v for k, v in body["parameters"].items() if v is not None}
        add_parameters(spec.parameters, params)
    return spec


_COMMAND = re.compile(r"^\s*(FROM|ADAPTER|SYSTEM|TEMPLATE|PARAMETER|LICENSE|MESSAGE|REQUIRES)\b\s*", re.IGNORECASE)


def parse_modelfile(text: str) -> CreateSpec:
    """The legacy Modelfile: one command a line; a value may be "quoted" or span lines in triple quotes."""
    spec = CreateSpec()
    pos = 0
    lines = 0
    while pos < len(text):
        end = text.find("\n", pos)
        line = text[pos:] if end < 0 else text[pos:end]
        lines += 1
        if not line.strip() or line.lstrip().startswith("#"):
            pos = len(text) if end < 0 else end + 1
            continue
        match = _COMMAND.match(line)
        if not match:
            raise StoreError(f"modelfile line {lines}: unknown command '{line.split()[0]}'")
        command = match.group(1).upper()
        rest_start = pos + match.end()
        if text.startswith('"""', rest_start):
            close = text.find('"""', rest_start + 3)
            if close < 0:
                raise StoreError(f'modelfile line {lines}: unterminated """')
            value = text[rest_start + 3:close]
            lines += value.count("\n")
            after = text.find("\n", close)
            pos = len(text) if after < 0 else after + 1
        else:
            value = line[match.end():].strip()
            pos = len(text) if end < 0 else end + 1
        _apply(spec, command, value, lines)
    return spec


def _apply(spec: CreateSpec, command: str, value: str, line: int) -> None:
    if command in ("FROM", "ADAPTER") and not value:
        raise StoreError(f"modelfile line {line}: {command} needs a value")
    if command == "FROM":
        spec.source = _unquote(value)
    elif command == "ADAPTER":
        spec.adapters.append(("path", _unquote(value)))
    elif command == "SYSTEM":
        spec.system = _unquote(value)
    elif command == "TEMPLATE":
        spec.template = _unquote(value)
    elif command == "PARAMETER":
        key, _, raw = value.partition(" ")
        if not key or not raw.strip():
            raise StoreError(f"modelfile line {line}: PARAMETER needs a name and a value")
        add_parameters(spec.parameters, {key: _unquote(raw.strip())})
    # LICENSE, MESSAGE and REQUIRES change nothing here.


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return shlex.split(value)[0]
        except ValueError:
            return value[1:-1]
    return value


def build_model(store: ModelStore, name: str, spec: CreateSpec) -> tuple[StoredModel, str | None]:
    """The StoredModel the spec describes, and the name of the store model it was made FROM (if any)."""
    parent: StoredModel | None = None
    if spec.files:
        if spec.source:
            raise StoreError("give either 'from' or 'files', not both")
        ggufs = [digest for fname, digest in spec.files.items() if fname.lower().endswith(".gguf")]
        if len(ggufs) != 1 or len(spec.files) != 1:
            raise StoreError("files: expected exactly one .gguf file (Safetensors models must be converted "
                             "to GGUF first, e.g. with llama.cpp's convert_hf_to_gguf.py)")
        gguf = str(_blob(store, ggufs[0]))
        model = StoredModel(name=name, gguf=gguf)
    elif spec.source:
        parent = store.get(spec.source)
        if parent is not None:
            model = StoredModel(name=name, gguf=parent.gguf, adapter=parent.adapter, template=parent.template,
                                system=parent.system, parameters=dict(parent.parameters), parent=parent.name)
        else:
            model = StoredModel(name=name, gguf=str(_local_file(spec.source, "FROM")))
    else:
        raise StoreError("neither 'from' nor 'files' was given: say which model or GGUF file to start from")
    if len(spec.adapters) > 1:
        raise StoreError("only one adapter per model")
    for kind, where in spec.adapters:
        model.adapter = str(_blob(store, where) if kind == "blob" else _local_file(where, "ADAPTER"))
    if spec.system is not None:
        model.system = spec.system
    if spec.template is not None:
        model.template = check_template(spec.template)
    if spec.parameters:
        if "stop" in spec.parameters:
            model.parameters.pop("stop", None)  # new stop sequences replace the base's, as in Ollama
        model.parameters.update(spec.parameters)
    model.name = full_name(name)
    return model, parent.name if parent else None


def check_template(template: str) -> str:
    if looks_like_go_template(template):
        raise StoreError("TEMPLATE: this is an Ollama Go template ({{ .Prompt }}); mirador serve renders "
                         "Jinja chat templates like the one inside GGUF files (tokenizer.chat_template)")
    try:
        compile_template(template)
    except TemplateError as exc:
        raise StoreError(f"TEMPLATE: {exc.message}") from None
    return template


def _blob(store: ModelStore, digest: str) -> Path:
    hexdigest = parse_digest(digest)
    if not store.has_blob(hexdigest):
        raise StoreError(f"blob sha256:{hexdigest} not found: upload it first with POST /api/blobs/sha256:{hexdigest}")
    return store.blob_path(hexdigest)


def _local_file(text: str, command: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise StoreError(f"model '{text}' not found ({command} takes a model of the store or an absolute "
                         f"path to a GGUF file on the server's machine)", status=404)
    if not path.is_file():
        raise StoreError(f"{command} {text}: no such file on the server's machine", status=404)
    return path.resolve()
