"""A small, pure-Python reader of a GGUF file's header: its metadata and tensor layout.

Listing models must not load them: this reads only the key/value section and
the tensor table (arrays such as the 50k-entry vocabulary are skipped, not kept),
so it costs milliseconds. It also checks that every tensor's data lies inside
the file: llama.cpp memory-maps the weights, and a truncated file would crash
the whole server (SIGBUS) instead of failing one request.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

MAGIC = b"GGUF"
_CHUNK = 1 << 20

# GGUF value types -> struct format (8 = string, 9 = array are read by hand).
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

# ggml tensor type -> (elements per block, bytes per block), from ggml's type traits.
# Types missing here (new ones) skip the size check rather than reject a good file.
_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17),
}

# general.file_type (llama_ftype) -> the quantization name Ollama shows.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
    36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


class GGUFError(ValueError):
    """The file is not a GGUF file, or a damaged one; the message says which and why."""


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]  # scalars and strings; arrays are replaced by their length
    tensor_count: int
    parameter_count: int
    file_size: int
    data_end: int = 0  # where the last tensor's data ends (0 if a tensor type was unknown)
    array_lengths: dict[str, int] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture") or "")

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def context_length(self) -> int:
        return int(self.arch_value("context_length", 0) or 0)

    @property
    def embedding_length(self) -> int:
        return int(self.arch_value("embedding_length", 0) or 0)

    @property
    def chat_template(self) -> str | None:
        template = self.metadata.get("tokenizer.chat_template")
        return template if isinstance(template, str) else None

    @property
    def quantization(self) -> str:
        file_type = self.metadata.get("general.file_type")
        return FILE_TYPES.get(file_type, "unknown") if isinstance(file_type, int) else "unknown"

    @property
    def parameter_size(self) -> str:
        label = self.metadata.get("general.size_label")
        if isinstance(label, str) and label:
            return label
        return human_count(self.parameter_count)

    @property
    def is_lora(self) -> bool:
        return self.metadata.get("general.type") == "adapter"


def human_count(n: int) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            return f"{value:.0f}{unit}" if value >= 100 else f"{value:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


class _Reader:
    """Sequential reads over a file, through a buffer grown a chunk at a time."""

    def __init__(self, f: BinaryIO, size: int):
        self.f, self.size = f, size
        self.buf = b""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # offset in buf

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _need(self, n: int) -> None:
        if self.pos + n <= len(self.buf):
            return
        if self.offset + n > self.size:
            raise GGUFError(f"it ends in the middle of its header (at byte {self.size})")
        rest = self.buf[self.pos:]
        self.base += self.pos
        self.buf = rest + self.f.read(max(_CHUNK, n - len(rest)))
        self.pos = 0

    def skip(self, n: int) -> None:
        if self.offset + n > self.size:
            raise GGUFError(f"it ends in the middle of its header (at byte {self.size})")
        if self.pos + n <= len(self.buf):
            self.pos += n
            return
        target = self.offset + n
        self.f.seek(target)  # the file position always follows the end of buf
        self.buf, self.base, self.pos = b"", target, 0

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize(fmt)
        self._need(n)
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += n
        return value

    def string(self, keep: bool = True) -> str:
        n = self.unpack("<Q")
        if n > self.size:
            raise GGUFError(f"a string of {n} bytes at byte {self.offset} is longer than the file")
        self._need(n)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", "replace") if keep else ""

    def value(self, kind: int, keep: bool = True) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == 8:
            return self.string(keep)
        if kind == 9:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS:  # fixed-size items: skip them in one step
                self.skip(count * struct.calcsize(_SCALARS[item]))
            else:
                for _ in range(count):
                    self.value(item, keep=False)
            return count
        raise GGUFError(f"unknown metadata value type {kind} at byte {self.offset}")


def read_header(path: Path) -> GGUFHeader:
    """Parse a GGUF header; GGUFError says why a file is not a usable GGUF file."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            return _parse(f, size)
    except OSError as exc:
        raise GGUFError(f"cannot read it: {exc.strerror or exc}") from None
    except (struct.error, OverflowError, MemoryError) as exc:
        raise GGUFError(f"its header is damaged ({exc})") from None


def _parse(f: BinaryIO, size: int) -> GGUFHeader:
    r = _Reader(f, size)
    if size < 4:
        raise GGUFError("it is too small to be a GGUF file")
    r._need(4)
    if r.buf[:4] != MAGIC:
        raise GGUFError("it does not start with the GGUF magic bytes")
    r.pos = 4
    version = r.unpack("<I")
    if version not in (2, 3):
        raise GGUFError(f"GGUF version {version} is not supported (only 2 and 3)")
    tensor_count, kv_count = r.unpack("<Q"), r.unpack("<Q")
    if tensor_count > size or kv_count > size:
        raise GGUFError("its header counts are impossible for its size")
    metadata: dict[str, Any] = {}
    arrays: dict[str, int] = {}
    for _ in range(kv_count):
        key = r.string()
        kind = r.unpack("<I")
        value = r.value(kind)
        if kind == 9:
            arrays[key] = value
        else:
            metadata[key] = value
    tensors: list[tuple[list[int], int, int]] = []
    parameters = 0
    for _ in range(tensor_count):
        r.string(keep=False)
        n_dims = r.unpack("<I")
        if n_dims > 8:
            raise GGUFError(f"a tensor with {n_dims} dimensions at byte {r.offset}")
        dims = [r.unpack("<Q") for _ in range(n_dims)]
        kind, offset = r.unpack("<I"), r.unpack("<Q")
        count = 1
        for d in dims:
            count *= d
        parameters += count
        tensors.append((dims, kind, offset))
    alignment = metadata.get("general.alignment", 32)
    if not isinstance(alignment, int) or alignment <= 0:
        alignment = 32
    data_start = -(-r.offset // alignment) * alignment
    header = GGUFHeader(version, metadata, tensor_count, parameters, size, array_lengths=arrays)
    end = data_start
    for dims, kind, offset in tensors:
        if kind not in _BLOCKS:
            return header  # a type we do not know the size of: trust llama.cpp to check
        per_block, block_bytes = _BLOCKS[kind]
        count = 1
        for d in dims:
            count *= d
        end = max(end, data_start + offset + -(-count // per_block) * block_bytes)
    header.data_end = end
    if end > size:
        raise GGUFError(f"it is truncated: its tensors need {end} bytes but the file has {size}")
    return header
