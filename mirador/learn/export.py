"""A PEFT LoRA adapter as a GGUF LoRA file, the form llama.cpp (and so `mirador serve`) loads.

Tensor names follow llama.cpp's convert_lora_to_gguf: `blk.N.attn_q.weight.lora_a` (GGUF dims
[in, rank]) and `.lora_b` ([rank, out]). llama.cpp stores Q and K with their rows permuted for its
rotary embedding (convert_hf_to_gguf's `permute`); a LoRA delta B·A on Q is a change of Q's rows, so
B's rows take the same permutation (A, on the input side, does not). V and O are stored as in HF.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError

_GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
               "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")


def permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's row permutation of Q/K (convert_hf_to_gguf.LlamaModel.permute), on a numpy array."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def export_gguf_lora(peft_dir: Path, out_path: Path, n_head: int, n_head_kv: int) -> Path:
    """Write `out_path` from a PEFT folder (adapter_config.json + adapter_model.safetensors)."""
    import json

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((peft_dir / "adapter_config.json").read_text(encoding="utf-8"))
    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        match = _KEY.search(key)
        if match is None:
            raise MiradorError(f"the adapter has a tensor llama.cpp has no place for: {key}")
        layer, module, side = match.groups()
        if module not in _GGUF_NAMES:
            raise MiradorError(f"the adapter targets {module}, which llama.cpp LoRA does not map")
        array = np.ascontiguousarray(value, dtype=np.float32)
        if side == "B" and module in ("q_proj", "k_proj"):
            array = np.ascontiguousarray(permute(array, n_head if module == "q_proj" else n_head_kv))
        out[f"blk.{layer}.{_GGUF_NAMES[module]}.weight.lora_{side.lower()}"] = array
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(config.get("lora_alpha", config.get("r", 8))))
    for name in sorted(out):
        writer.add_tensor(name, out[name])  # numpy (rows, cols) -> GGUF dims [cols, rows]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return out_path
