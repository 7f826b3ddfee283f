"""A PEFT LoRA adapter as a GGUF LoRA file, the form llama.cpp (and so `mirador serve`) loads.

Tensor names follow llama.cpp's convert_lora_to_gguf: `blk.N.attn_q.weight.lora_a` (GGUF dims
[in, rank]) and `.lora_b` ([rank, out]). llama.cpp stores Q and K with their rows permuted for its
rotary embedding (convert_hf_to_gguf's `permute`); a LoRA delta B·A on Q is a change of Q's rows, so
B's rows take the same permutation (A, on the input side, does not). V and O are stored as in HF.

Two adapter layouts come in, one per training backend:
  PEFT (torch): adapter_model.safetensors, `…layers.N.self_attn.q_proj.lora_A.weight` [r, in] and
                `lora_B.weight` [out, r]; adapter_config.json's lora_alpha and r (delta = alpha/r · B·A).
  mlx-lm (mlx): adapters.safetensors, `model.layers.N.self_attn.q_proj.lora_a` [in, r] and `lora_b`
                [r, out], i.e. PEFT's transposed; adapter_config.json's lora_parameters.scale is the
                multiplier itself (delta = scale · B·A), so alpha = scale · r.
`read_adapter` brings both to PEFT's layout; `mlx_to_peft` writes that as a PEFT folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError

_GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
               "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.\w+)?\.weight$")
_MLX_KEY = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([ab])$")
MLX_WEIGHTS, PEFT_WEIGHTS = "adapters.safetensors", "adapter_model.safetensors"


def permute(weights: Any, n_head: int) -> Any:
    """llama.cpp's row permutation of Q/K (convert_hf_to_gguf.LlamaModel.permute), on a numpy array."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], float, int]:
    """(tensors named and shaped as PEFT's, alpha, rank) from a PEFT or an mlx-lm adapter folder."""
    import json

    import numpy as np
    from safetensors.numpy import load_file

    config_path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MiradorError(f"cannot read the adapter's config {config_path}: {exc}") from None
    if (adapter_dir / PEFT_WEIGHTS).is_file():
        rank = int(config.get("r", 8))
        return load_file(str(adapter_dir / PEFT_WEIGHTS)), float(config.get("lora_alpha", rank)), rank
    if not (adapter_dir / MLX_WEIGHTS).is_file():
        raise MiradorError(f"{adapter_dir} holds no adapter ({PEFT_WEIGHTS} or {MLX_WEIGHTS})")
    params = config.get("lora_parameters") or {}
    if config.get("fine_tune_type", "lora") != "lora" or "scale" not in params:
        raise MiradorError(f"{config_path}: only mlx-lm LoRA adapters (lora_parameters.scale) can be exported",
                           hint="DoRA and full fine-tunes have no GGUF LoRA form")
    rank = int(params["rank"])
    out: dict[str, Any] = {}
    for key, value in load_file(str(adapter_dir / MLX_WEIGHTS)).items():
        match = _MLX_KEY.search(key)
        if match is None:
            raise MiradorError(f"the adapter has a tensor llama.cpp has no place for: {key}")
        layer, block, module, side = match.groups()
        name = f"base_model.model.model.layers.{layer}.{block}.{module}.lora_{side.upper()}.weight"
        out[name] = np.ascontiguousarray(value.T)  # mlx-lm keeps x @ A @ B; PEFT keeps B @ (A @ x)
    return out, float(params["scale"]) * rank, rank


def mlx_to_peft(mlx_dir: Path, peft_dir: Path) -> Path:
    """An mlx-lm adapter as a PEFT folder (transformers + peft load it with PeftModel.from_pretrained)."""
    import json

    from safetensors.numpy import save_file

    tensors, alpha, rank = read_adapter(mlx_dir)
    config = json.loads((mlx_dir / "adapter_config.json").read_text(encoding="utf-8"))
    layers = sorted({int(_KEY.search(k).group(1)) for k in tensors})  # type: ignore[union-attr]
    modules = sorted({_KEY.search(k).group(2) for k in tensors})  # type: ignore[union-attr]
    peft_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(peft_dir / PEFT_WEIGHTS), metadata={"format": "pt"})
    peft_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
                   "lora_dropout": 0.0, "bias": "none", "target_modules": modules, "layers_to_transform": layers,
                   "base_model_name_or_path": config.get("mirador", {}).get("base")}
    (peft_dir / "adapter_config.json").write_text(json.dumps(peft_config, indent=1), encoding="utf-8")
    return peft_dir


def export_gguf_lora(adapter_dir: Path, out_path: Path, n_head: int, n_head_kv: int) -> Path:
    """Write `out_path` from a PEFT or mlx-lm adapter folder (see the module's note on both layouts)."""
    import gguf
    import numpy as np

    tensors, alpha, _rank = read_adapter(adapter_dir)
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
    writer.add_float32("adapter.lora.alpha", alpha)
    for name in sorted(out):
        writer.add_tensor(name, out[name])  # numpy (rows, cols) -> GGUF dims [cols, rows]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out_path)
    return out_path
