"""A minimal GGUF writer for test files: LoRA adapters for SmolLM2, and damaged variants."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

ALIGN = 32


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _value(value: Any) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, float):
        return struct.pack("<If", 6, value)
    if isinstance(value, int):
        return struct.pack("<II", 4, value)
    raise TypeError(f"no GGUF type for {value!r}")


def write_gguf(path: Path, metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    """Write F32 tensors; an array of numpy shape (rows, cols) has GGUF dims [cols, rows]."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        out += _string(key) + _value(value)
    offset = 0
    blobs = []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        dims = list(reversed(array.shape))
        out += _string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", 0, offset)
        padded = data + b"\0" * (-len(data) % ALIGN)
        blobs.append(padded)
        offset += len(padded)
    out += b"\0" * (-len(out) % ALIGN)
    for blob in blobs:
        out += blob
    path.write_bytes(bytes(out))
    return path


def write_smollm2_lora(path: Path, *, rank: int = 8, scale: float = 0.2, seed: int = 0, layers: int = 30) -> Path:
    """A random LoRA adapter on SmolLM2-135M's attention queries and values (576 wide, 192 for values)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for name, n_out in (("attn_q", 576), ("attn_v", 192)):
            base = f"blk.{layer}.{name}.weight"
            tensors[f"{base}.lora_a"] = rng.normal(0, scale, (rank, 576))  # GGUF dims [576, rank]
            tensors[f"{base}.lora_b"] = rng.normal(0, scale, (n_out, rank))  # GGUF dims [rank, n_out]
    metadata = {"general.architecture": "llama", "general.type": "adapter", "adapter.type": "lora",
                "adapter.lora.alpha": float(rank)}
    return write_gguf(path, metadata, tensors)
