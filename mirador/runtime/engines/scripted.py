"""The scripted engine: deterministic models for tests and overhead benchmarks.

A JSON script (`mirador serve --engine scripted --script FILE`) says, per model,
what it answers and how fast:

    {"models": {"fast:1b": {"text": "Hello there, friend.", "load_time": 0.0, "ttft": 0.0,
                            "rate": 0, "size": 1300000000, "family": "llama",
                            "parameter_size": "1.2B", "quantization_level": "Q4_K_M",
                            "embedding_dim": 384, "error_after": null}},
     "max_loaded_models": 3, "max_queue": 512, "record": "/path/requests.ndjson"}

Per model, all optional: `text` (split into words, each with its leading
space), `num_tokens` (repeat `text`, or filler words, up to N tokens), `echo`
(`text` followed by the last user message, to prove what a stage received),
`load_time`, `ttft` (seconds before the first token), `rate` (tokens/s, 0 = as
fast as possible), `error_after` (fail with an {"error"} line after N tokens),
`embedding_dim` (0 = cannot embed), `context_length`, and the descriptive
fields of /api/tags.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from mirador.errors import ConfigError
from mirador.runtime.engines.base import (
    EngineError,
    GenerationRequest,
    GenerationStats,
    LoadedModel,
    ModelInfo,
    full_name,
)

FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
# At high rates tokens leave in batches: never more than this many per write,
# so one batch never holds the loop long and a disconnect is noticed at once.
MAX_BATCH = 256


@dataclass(frozen=True)
class ScriptedModel:
    text: str = "Hello there, friend."
    num_tokens: int | None = None
    echo: bool = False
    load_time: float = 0.0
    ttft: float = 0.0
    rate: float = 0.0
    size: int = 1_300_000_000
    family: str = "llama"
    parameter_size: str = "1.2B"
    quantization_level: str = "Q4_K_M"
    embedding_dim: int = 384
    error_after: int | None = None
    context_length: int = 4096


DEFAULT_MODELS: dict[str, ScriptedModel] = {
    "fast:1b": ScriptedModel(text="Hello there, friend.", size=1_300_000_000, parameter_size="1.2B"),
    "mid:3b": ScriptedModel(
        text="A considered answer from the middle model.", load_time=0.05, ttft=0.02,
        size=2_000_000_000, parameter_size="3.2B",
    ),
    "big:8b": ScriptedModel(
        text="A thorough answer from the big model, with more words in it.", load_time=0.1,
        ttft=0.05, size=4_900_000_000, parameter_size="8.0B",
    ),
}


@dataclass
class Script:
    models: dict[str, ScriptedModel] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    max_loaded_models: int | None = None
    max_queue: int | None = None
    record: Path | None = None


def load_script(path: Path | None) -> Script:
    """Read and validate a script; no file means the built-in models."""
    if path is None:
        return Script()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"script file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read script file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}, line {exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object with a 'models' key")
    known = {"models", "max_loaded_models", "max_queue", "record"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{path}: unknown key '{key}'", hint=f"known keys: {', '.join(sorted(known))}")
    script = Script()
    if "models" in data:
        if not isinstance(data["models"], dict) or not data["models"]:
            raise ConfigError(f"{path}: 'models' must be a non-empty object of model name -> settings")
        script.models = {
            full_name(name): _parse_model(path, name, spec) for name, spec in data["models"].items()
        }
    for key in ("max_loaded_models", "max_queue"):
        value = data.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{path}: '{key}' must be a positive integer")
            setattr(script, key, value)
    if data.get("record") is not None:
        if not isinstance(data["record"], str):
            raise ConfigError(f"{path}: 'record' must be a file path")
        script.record = Path(data["record"]).expanduser()
        try:  # fail at start-up, not on every request
            script.record.parent.mkdir(parents=True, exist_ok=True)
            script.record.open("a").close()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write the record file {script.record}: {exc.strerror}") from None
    return script


def _parse_model(path: Path, name: str, spec: Any) -> ScriptedModel:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: models.{name} must be an object")
    types = {f.name: f.type for f in fields(ScriptedModel)}
    for key, value in spec.items():
        if key not in types:
            raise ConfigError(
                f"{path}: models.{name}: unknown key '{key}'", hint=f"known keys: {', '.join(types)}"
            )
        expected = types[key]
        checks = {
            "str": (lambda v: isinstance(v, str), "a string"),
            "bool": (lambda v: isinstance(v, bool), "true or false"),
            "int": (_is_count, "a non-negative integer"),
            "float": (lambda v: _is_count(v) or (isinstance(v, float) and v >= 0), "a non-negative number"),
            "int | None": (lambda v: v is None or _is_count(v), "a non-negative integer or null"),
        }
        check, wanted = checks[expected]
        if not check(value):
            raise ConfigError(f"{path}: models.{name}.{key}: expected {wanted}, got {value!r}")
    return ScriptedModel(**spec)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_WORD = re.compile(r"\s*\S+")


def tokenize(text: str) -> list[str]:
    """Words with their leading whitespace: joining the tokens gives the text back (bar trailing space)."""
    return _WORD.findall(text)


def reply_tokens(model: ScriptedModel, request: GenerationRequest) -> list[str]:
    text = model.text
    if model.echo:
        heard = request.last_user_text()
        text = f"{text} {heard}" if text else heard
    tokens = tokenize(text)
    if model.num_tokens is None:
        return tokens
    source = tokens or [f" {word}" for word in FILLER]
    out = [source[i % len(source)] for i in range(model.num_tokens)]
    if out and not tokens:
        out[0] = out[0].lstrip()
    return out


def embed_text(text: str, dim: int) -> list[float]:
    """A deterministic unit vector: the sum of one pseudo-random vector per word.

    Texts sharing words get similar vectors, so similarity search behaves
    plausibly in tests while staying exactly reproducible.
    """
    words = re.findall(r"\w+", text.lower()) or [""]
    total = [0.0] * dim
    for word in words:
        for i, x in enumerate(_word_vector(word, dim)):
            total[i] += x
    norm = math.sqrt(sum(x * x for x in total)) or 1.0
    return [x / norm for x in total]


@lru_cache(maxsize=4096)
def _word_vector(word: str, dim: int) -> tuple[float, ...]:
    seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    return tuple(rng.gauss(0.0, 1.0) for _ in range(dim))


class ScriptedEngine:
    name = "scripted"

    def __init__(self, script: Script):
        self.script = script
        modified = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        self._infos = {
            name: ModelInfo(
                name=name,
                size=model.size,
                digest=hashlib.sha256(name.encode()).hexdigest(),
                family=model.family,
                parameter_size=model.parameter_size,
                quantization_level=model.quantization_level,
                context_length=model.context_length,
                embedding_length=model.embedding_dim,
                modified_at=modified,
            )
            for name, model in script.models.items()
        }

    def list_models(self) -> list[ModelInfo]:
        return list(self._infos.values())

    async def load(self, name: str) -> LoadedModel:
        model = self.script.models[name]
        if model.load_time:
            await asyncio.sleep(model.load_time)
        info = self._infos[name]
        return LoadedModel(info=info, size_vram=info.size, context_length=model.context_length, handle=model)

    async def unload(self, loaded: LoadedModel) -> None:
        return None

    async def generate(
        self, loaded: LoadedModel, request: GenerationRequest, stats: GenerationStats
    ) -> AsyncIterator[list[str]]:
        model: ScriptedModel = loaded.handle
        tokens = reply_tokens(model, request)
        stats.prompt_eval_count = max(1, len(tokenize(request.all_text())))
        if model.ttft:
            await asyncio.sleep(model.ttft)
        fail_at = model.error_after
        end = len(tokens) if fail_at is None else min(fail_at, len(tokens))
        start = time.monotonic()
        sent = 0
        while sent < end:
            if model.rate > 0:
                # Elapsed-time accounting instead of one sleep per token: sleeps are
                # coarse, so at high rates each wake-up sends everything now due.
                elapsed = time.monotonic() - start
                due = int(elapsed * model.rate) + 1  # token i is due at i / rate
                if due <= sent:
                    await asyncio.sleep(max(0.0, sent / model.rate - elapsed))
                    continue
                upto = min(end, due, sent + MAX_BATCH)
            else:
                upto = min(end, sent + MAX_BATCH)
            batch = tokens[sent:upto]
            sent = upto
            stats.eval_count = sent
            yield batch
            if model.rate <= 0:
                await asyncio.sleep(0)  # let a disconnect or another model's stream in
        if fail_at is not None and fail_at <= len(tokens):
            raise EngineError(f"scripted failure after {fail_at} tokens")

    async def embed(self, loaded: LoadedModel, texts: list[str]) -> list[list[float]]:
        dim = loaded.info.embedding_length
        if not dim:
            raise EngineError(f'"{loaded.info.name}" does not support embeddings')
        return [embed_text(text, dim) for text in texts]

    async def close(self) -> None:
        return None
