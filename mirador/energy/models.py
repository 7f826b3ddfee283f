"""What the cost model needs to know about a model: its size and its quantization.

Sizes come from the server's /api/tags details ("8.0B", "Q4_K_M"); failing that,
from the bytes on disk and the quantization; failing that, from the name's tag
("llama3.1:8b", "smollm2:135m"), which is how people name models anyway.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

# Bits per weight as stored, including the block scales (llama.cpp's figures, rounded). Decoding
# reads every weight once per token, so energy per token follows bytes, not parameters.
_BITS: dict[str, float] = {
    "Q2_K": 3.35, "IQ2": 2.5, "Q3_K": 3.9, "IQ3": 3.3, "Q4_0": 4.55, "Q4_1": 5.0, "Q4_K": 4.85, "IQ4": 4.5,
    "Q5_0": 5.5, "Q5_1": 6.0, "Q5_K": 5.7, "Q6_K": 6.6, "Q8_0": 8.5, "F16": 16.0, "BF16": 16.0, "F32": 32.0,
}
Q4_BITS = _BITS["Q4_K"]  # the reference the published J/token figures were measured at
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmbt])\b", re.IGNORECASE)
_SCALE = {"k": 1e-6, "m": 1e-3, "b": 1.0, "t": 1e3}


@dataclass(frozen=True)
class ModelFacts:
    name: str
    params_b: float | None  # billions of parameters; None when nothing says
    quantization: str | None = None
    size_bytes: int | None = None
    params_source: str = "unknown"  # "server", "file size", "name", "unknown"

    @classmethod
    def from_tags(cls, entry: dict[str, Any]) -> ModelFacts:
        """One model of /api/tags (or /api/ps)."""
        name = str(entry.get("name") or entry.get("model") or "")
        details = entry.get("details") or {}
        quant = details.get("quantization_level") or None
        size = entry.get("size") if isinstance(entry.get("size"), int) else None
        params = parse_parameter_size(details.get("parameter_size"))
        if params is not None:
            return cls(name, params, quant, size, "server")
        if size and quant:
            return cls(name, size * 8 / bits_per_weight(quant) / 1e9, quant, size, "file size")
        return cls.from_name(name, quant, size)

    @classmethod
    def from_name(cls, name: str, quantization: str | None = None, size_bytes: int | None = None) -> ModelFacts:
        params = params_from_name(name)
        return cls(name, params, quantization, size_bytes, "name" if params is not None else "unknown")


def parse_parameter_size(text: Any) -> float | None:
    """'8.0B' -> 8.0, '135M' -> 0.135; None for anything else."""
    if not isinstance(text, str):
        return None
    match = _SIZE.fullmatch(text.strip())
    if not match:
        return None
    value = float(match.group(1)) * _SCALE[match.group(2).lower()]
    return value if value > 0 else None


def params_from_name(name: str) -> float | None:
    """'llama3.1:8b' -> 8, 'qwen2.5:0.5b-instruct' -> 0.5, 'smollm2:135m' -> 0.135, 'mixtral:8x7b' -> 56."""
    tag = name.rsplit(":", 1)[1] if ":" in name else name
    for text in (tag, name):
        moe = re.search(r"(\d+)x(\d+(?:\.\d+)?)b", text, re.IGNORECASE)
        if moe:
            return int(moe.group(1)) * float(moe.group(2))
        for match in _SIZE.finditer(text):
            if match.group(2).lower() in "mb":  # "7b", "135m"; never the "k" of a quantization like q4_k
                value = float(match.group(1)) * _SCALE[match.group(2).lower()]
                if value > 0:
                    return value
    return None


def bits_per_weight(quantization: str | None) -> float:
    """Stored bits per weight; Q4 when unknown (what Ollama's default tags ship)."""
    if not quantization:
        return Q4_BITS
    key = quantization.upper()
    for prefix in sorted(_BITS, key=len, reverse=True):
        if key.startswith(prefix):
            return _BITS[prefix]
    return Q4_BITS


def prior_quality(params_b: float | None) -> float:
    """A size-only guess at answer quality, 0..1, for when the capability matrix says nothing.

    Fitted by eye to public MMLU-style scores of instruct models (135M ≈ 0.3, 1B ≈ 0.5, 3B ≈ 0.65,
    8B ≈ 0.75, 70B ≈ 0.9): logarithmic in size, as those scores are.
    """
    if params_b is None:
        params_b = 7.0
    return round(min(0.95, max(0.2, 0.25 + 0.115 * math.log(1 + params_b / 0.1))), 3)
