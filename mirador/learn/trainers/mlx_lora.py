"""The mlx backend: mlx-lm's LoRA layers on the converted model (Apple Silicon; mlx's CPU build elsewhere).

It reads the same converted Hugging Face folder as the torch backend (gguf_convert.converted_dir),
tokenizes with the same `encode` (loss on the assistant's tokens only), and takes the same
Hyperparams. One difference is in how LoRA's strength is written down:

    PEFT (torch):  delta W = (alpha / r) · B·A          (lora_alpha, r in adapter_config.json)
    mlx-lm:        delta W = scale · B·A                (lora_parameters.scale)

so `scale = alpha / rank` here, and export.py turns an MLX adapter back into alpha = scale · rank
for llama.cpp (which, like PEFT, scales by alpha / r). With the same base weights both backends
start from the same loss: B starts at zero and A from the same uniform(±1/sqrt(in)) distribution.

The adapter is saved in mlx-lm's own layout (adapters.safetensors + adapter_config.json), so
`mlx_lm.generate --adapter-path` and `mlx_lm.fuse` take it as is; export.py reads it too.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError
from mirador.learn.trainers.base import Hyperparams, TrainResult

# Where mlx-lm's llama blocks keep each projection (the keys linear_to_lora_layers matches per block).
_BLOCK_PATHS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


def require_mlx() -> None:
    try:
        import mlx.core  # noqa: F401
        import mlx_lm  # noqa: F401
    except ImportError as exc:
        raise MiradorError(f"the mlx training backend needs {exc.name or 'mlx'}",
                           hint="pip install 'mirador[train-mlx]'  (mlx and mlx-lm; on Linux: "
                                "pip install 'mlx[cpu]' mlx-lm), or use --backend torch") from None


def lora_scale(hp: Hyperparams) -> float:
    """mlx-lm's `scale` for PEFT's (alpha, r): the multiplier itself, alpha / r."""
    return hp.alpha / hp.rank


def lora_keys(targets: tuple[str, ...] | list[str]) -> list[str]:
    unknown = [t for t in targets if t not in _BLOCK_PATHS]
    if unknown:
        raise MiradorError(f"the mlx backend cannot put LoRA on {', '.join(unknown)}",
                           hint=f"choose among {', '.join(_BLOCK_PATHS)}")
    return [f"{_BLOCK_PATHS[t]}.{t}" for t in targets]


def _rope_config(base_dir: Path) -> dict[str, Any]:
    """transformers 5 writes RoPE's base as config.json's `rope_parameters.rope_theta`; mlx-lm's llama
    reads only a top-level `rope_theta` and would fall back to 10,000 (SmolLM2 uses 100,000)."""
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    extra: dict[str, Any] = {}
    if "rope_theta" not in config and "rope_theta" in rope:
        extra["rope_theta"] = rope["rope_theta"]
    if not config.get("rope_scaling") and rope.get("rope_type", "default") != "default":
        extra["rope_scaling"] = rope
    return extra


def _model_classes(config: dict[str, Any]) -> tuple[Any, Any]:
    """mlx-lm's model class, taking a tied embedding from `lm_head.weight` too: the converted folder keeps
    tied tensors once (safetensors' save_model) and may keep them under that name, where mlx-lm's llama
    expects `model.embed_tokens.weight` and drops lm_head."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)

    class TiedFromHead(model_class):  # type: ignore[misc, valid-type]
        def sanitize(self, weights: dict[str, Any]) -> dict[str, Any]:
            if config.get("tie_word_embeddings", True) and "lm_head.weight" in weights:
                weights.setdefault("model.embed_tokens.weight", weights["lm_head.weight"])
            return super().sanitize(weights) if hasattr(super(), "sanitize") else weights

    return TiedFromHead, args_class


def load_base(base_dir: Path, adapter_dir: Path | None = None) -> tuple[Any, Any]:
    """(model, mlx-lm TokenizerWrapper) from a converted folder, with an MLX adapter if given."""
    from mirador.learn.gguf_convert import _offline

    _offline()
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load_model, load_tokenizer

    try:
        model, config = load_model(Path(base_dir), model_config=_rope_config(Path(base_dir)),
                                   get_model_classes=_model_classes)
        if adapter_dir is not None:
            load_adapters(model, str(adapter_dir))
            model.eval()
        tokenizer = load_tokenizer(Path(base_dir), eos_token_ids=config.get("eos_token_id"))
    except (ValueError, OSError, KeyError) as exc:
        raise MiradorError(f"mlx-lm cannot load {base_dir}: {exc}") from None
    return model, tokenizer


def add_lora(model: Any, hp: Hyperparams) -> dict[str, Any]:
    """Freeze the base, wrap the targeted projections in LoRALinear; returns the adapter_config."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    n_layers = len(model.layers)
    num_layers = hp.layers if 0 < hp.layers < n_layers else n_layers
    params = {"rank": hp.rank, "scale": lora_scale(hp), "dropout": 0.0, "keys": lora_keys(hp.targets)}
    model.freeze()
    linear_to_lora_layers(model, num_layers, params)
    return {"fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": params,
            # Not read by mlx-lm; kept so that export.py and people see the PEFT-style numbers.
            "mirador": {"alpha": hp.alpha, "rank": hp.rank, "targets": list(hp.targets), "seed": hp.seed}}


def _batch(rows: list[tuple[list[int], list[int]]]) -> tuple[Any, Any]:
    """Right-padded ids and a 0/1 mask of the tokens the loss counts (the assistant's answer)."""
    import mlx.core as mx
    import numpy as np

    from mirador.learn.trainers.torch_lora import IGNORE

    width = max(len(ids) for ids, _ in rows)
    ids = np.zeros((len(rows), width), np.int32)  # padding sits after every real token: causal, never seen
    mask = np.zeros((len(rows), width), np.float32)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, :len(row_ids)] = row_ids
        mask[i, :len(row_labels)] = [0.0 if label == IGNORE else 1.0 for label in row_labels]
    return mx.array(ids), mx.array(mask)


def _nll(model: Any, ids: Any, mask: Any) -> tuple[Any, Any]:
    """Summed negative log-likelihood of the masked next tokens, and how many there are."""
    import mlx.nn as nn

    logits = model(ids[:, :-1])
    target_mask = mask[:, 1:]
    nll = nn.losses.cross_entropy(logits, ids[:, 1:]) * target_mask
    return nll.sum(), target_mask.sum()


def _mean_nll(model: Any, ids: Any, mask: Any) -> Any:
    total, count = _nll(model, ids, mask)
    return total / count


def mean_loss(model: Any, rows: list[tuple[list[int], list[int]]]) -> float:
    """Mean negative log-likelihood per answer token over `rows` (the held-out loss), as torch's."""
    import mlx.core as mx

    total, count = 0.0, 0.0
    for row in rows:
        nll, n = _nll(model, *_batch([row]))
        mx.eval(nll, n)
        total, count = total + float(nll), count + float(n)
    return total / count if count else float("nan")


def generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 40) -> str:
    """A greedy answer (mlx-lm's default sampler is argmax), for the sanity check."""
    from mlx_lm import generate as mlx_generate

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return mlx_generate(model, tokenizer, ids, max_tokens=max_new_tokens, verbose=False).strip()


def save_adapter(model: Any, config: dict[str, Any], folder: Path) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return folder


class MlxLoraTrainer:
    name = "mlx"

    def train(self, base_dir: Path, train: list[list[dict[str, str]]], valid: list[list[dict[str, str]]],
              out_dir: Path, hp: Hyperparams, *, deadline: float | None = None,
              sanity_prompts: list[str] | None = None, progress: Callable[[int, int, float, int], None] | None = None,
              sample_base: bool = False) -> TrainResult:
        require_mlx()
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim

        from mirador.learn.trainers.torch_lora import encode

        if not train:
            raise MiradorError("no training examples")
        mx.random.seed(hp.seed)
        rng = random.Random(hp.seed)
        model, tokenizer = load_base(base_dir)
        hf_tokenizer = tokenizer._tokenizer  # the transformers tokenizer mlx-lm wraps: the same ids as torch
        train_rows = [encode(hf_tokenizer, m, hp.max_seq_len) for m in train]
        valid_rows = [encode(hf_tokenizer, m, hp.max_seq_len) for m in valid]
        valid_before = mean_loss(model, valid_rows) if valid_rows else float("nan")
        base_samples = {p: generate(model, tokenizer, p) for p in (sanity_prompts or [])} if sample_base else {}

        config = add_lora(model, hp)
        # torch.optim.AdamW's defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01) are mlx's too, but
        # mlx leaves out Adam's bias correction unless asked: its first steps would be ~3x torch's.
        optimizer = optim.AdamW(learning_rate=hp.lr, bias_correction=True)
        loss_and_grad = nn.value_and_grad(model, _mean_nll)

        losses: list[float] = []
        tokens = 0
        stopped = None
        order: list[int] = []
        start = time.monotonic()
        model.train()
        for step in range(hp.iterations):
            if deadline is not None and time.monotonic() >= deadline:
                stopped = f"time budget reached after {step} of {hp.iterations} steps"
                break
            batch = []
            for _ in range(hp.batch_size):  # the same shuffled order as the torch backend for one seed
                if not order:
                    order = list(range(len(train_rows)))
                    rng.shuffle(order)
                batch.append(train_rows[order.pop()])
            ids, mask = _batch(batch)
            loss, grads = loss_and_grad(model, ids, mask)
            optimizer.update(model, grads)
            mx.eval(loss, model.trainable_parameters(), optimizer.state)
            losses.append(float(loss))
            tokens += sum(len(row_ids) for row_ids, _ in batch)
            if progress is not None:
                progress(step + 1, hp.iterations, losses[-1], tokens)
        seconds = time.monotonic() - start

        model.eval()
        valid_after = mean_loss(model, valid_rows) if valid_rows else float("nan")
        samples = {p: generate(model, tokenizer, p) for p in (sanity_prompts or [])}
        config["mirador"]["base"] = str(base_dir)
        adapter_dir = save_adapter(model, config, out_dir / "mlx")
        return TrainResult(adapter_dir=adapter_dir, steps=len(losses), train_tokens=tokens, seconds=seconds,
                           losses=losses, valid_before=valid_before, valid_after=valid_after, stopped_early=stopped,
                           samples=samples, base_samples=base_samples)
