"""A GGUF LoRA merged into its base GGUF: for runtimes that refuse ADAPTER at /api/create.

Some Ollama releases refuse adapters outright, and llama.cpp's LoRA covers only some architectures.
The fallback is one plain GGUF: every tensor the adapter touches becomes W + scale·B·A, every other
tensor and every metadata key is copied byte for byte (quantized tensors stay quantized).

Layouts: the adapter is already in llama.cpp's layout (export.py permuted B's rows for Q and K), so
B·A adds to the GGUF tensor as stored, with no permutation here. A numpy tensor of GGUF dims
[in, out] has shape (out, in); lora_a has GGUF dims [in, rank] → (rank, in), lora_b [rank, out] →
(out, rank); B @ A is (out, in) like the weight. scale = alpha / rank, as llama.cpp applies an
adapter at scale 1 (llama-adapter.cpp). Changed tensors are written as F16 (F32 where the base
tensor was F32), the precision llama.cpp dequantizes to anyway.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError


class FuseError(MiradorError):
    """The adapter cannot be merged into this base."""


def read_lora(adapter: Path) -> tuple[dict[str, tuple[Any, Any]], float]:
    """{base tensor name: (A, B)} and alpha of a GGUF LoRA file."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(adapter))
    field = reader.fields.get("adapter.lora.alpha")
    alpha = float(field.contents()) if field is not None else 0.0
    halves: dict[str, dict[str, Any]] = {}
    for tensor in reader.tensors:
        for side in ("a", "b"):
            if tensor.name.endswith(f".lora_{side}"):
                data = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
                halves.setdefault(tensor.name.removesuffix(f".lora_{side}"), {})[side] = \
                    np.asarray(data, dtype=np.float32).reshape([int(n) for n in reversed(tensor.shape)])
                break
        else:
            raise FuseError(f"{adapter.name} has a tensor that is not a LoRA half: {tensor.name}")
    pairs = {}
    for name, both in halves.items():
        if set(both) != {"a", "b"}:
            raise FuseError(f"{adapter.name}: {name} has only lora_{''.join(both)}")
        pairs[name] = (both["a"], both["b"])
    if not pairs:
        raise FuseError(f"{adapter.name} holds no LoRA tensors")
    return pairs, alpha


def fuse(base: Path, adapter: Path, out_path: Path) -> Path:
    """Write base + adapter merged to `out_path` (atomically: a temp file renamed at the end)."""
    import gguf
    import numpy as np

    pairs, alpha = read_lora(adapter)
    reader = gguf.GGUFReader(str(base))
    tensors = {t.name: t for t in reader.tensors}
    missing = sorted(set(pairs) - set(tensors))
    if missing:
        raise FuseError(f"the adapter changes tensors the base {base.name} does not have: {', '.join(missing[:4])}",
                        hint="the adapter was trained on another model")
    arch_field = reader.fields.get("general.architecture")
    arch = arch_field.contents() if arch_field is not None else "llama"

    def merged(name: str) -> Any:
        tensor = tensors[name]
        lora_a, lora_b = pairs[name]
        rank = lora_a.shape[0]
        scale = alpha / rank if alpha else 1.0
        weight = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        weight = weight.reshape([int(n) for n in reversed(tensor.shape)])
        if weight.shape != (lora_b.shape[0], lora_a.shape[1]):
            raise FuseError(f"{name}: the adapter's shape {lora_b.shape[0]}x{lora_a.shape[1]} does not fit the "
                            f"base's {weight.shape[0]}x{weight.shape[1]}",
                            hint="the adapter was trained on another model")
        weight += scale * (lora_b @ lora_a)
        return np.ascontiguousarray(weight, dtype=changed[name])

    out_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.data_alignment = reader.alignment  # the copied general.alignment must stay true
        for field in reader.fields.values():
            # GGUF.* are the reader's virtual fields; the writer writes the architecture itself.
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        changed: dict[str, Any] = {}
        for tensor in reader.tensors:
            if tensor.name in pairs:
                dtype = np.float32 if tensor.tensor_type == gguf.GGMLQuantizationType.F32 else np.float16
                shape = [int(n) for n in reversed(tensor.shape)]
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                writer.add_tensor_info(tensor.name, shape, np.dtype(dtype), nbytes)
                changed[tensor.name] = dtype
            else:
                writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                       tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            # One merged tensor in memory at a time: an 8B model's Q tensors alone are a gigabyte.
            data = merged(tensor.name) if tensor.name in changed else tensor.data
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        writer.close()
        os.replace(tmp, out_path)
    except OSError as exc:
        raise FuseError(f"cannot write the fused model {out_path}: {exc.strerror or exc}",
                        hint="free some disk space, or check the data directory's permissions") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out_path
