"""The torch backend: PEFT LoRA on a converted Hugging Face model, CPU or CUDA.

The loss is on the assistant's tokens only (the prompt is given, not learnt), which is what makes a
small rated history shift how the model answers rather than how it echoes questions.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError
from mirador.learn.trainers.base import Hyperparams, TrainResult

IGNORE = -100


def require_torch() -> None:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MiradorError(f"the torch training backend needs {exc.name}",
                           hint="pip install 'mirador[train-torch]'  (torch, transformers, peft, gguf)") from None


def encode(tokenizer: Any, messages: list[dict[str, str]], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation; labels are IGNORE except on the last answer."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prefix = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(full, add_special_tokens=False).input_ids
    n_prefix = len(tokenizer(prefix, add_special_tokens=False).input_ids)
    labels = [IGNORE] * n_prefix + ids[n_prefix:]
    return ids[:max_len], labels[:max_len]


def _batches(rows: list[tuple[list[int], list[int]]], size: int, pad: int, device: Any) -> Any:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, :len(row_ids)] = torch.tensor(row_ids)
        labels[i, :len(row_labels)] = torch.tensor(row_labels)
        mask[i, :len(row_ids)] = 1
    return ids.to(device), labels.to(device), mask.to(device)


def mean_loss(model: Any, rows: list[tuple[list[int], list[int]]], pad: int, device: Any) -> float:
    """Mean negative log-likelihood per answer token over `rows` (the held-out loss)."""
    import torch

    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            ids, labels, mask = _batches([row], 1, pad, device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                    ignore_index=IGNORE, reduction="sum")
            total += float(nll)
            count += int((target != IGNORE).sum())
    return total / count if count else float("nan")


class TorchLoraTrainer:
    name = "torch"

    def train(self, base_dir: Path, train: list[list[dict[str, str]]], valid: list[list[dict[str, str]]],
              out_dir: Path, hp: Hyperparams, *, deadline: float | None = None,
              sanity_prompts: list[str] | None = None, progress: Callable[[int, int, float, int], None] | None = None,
              sample_base: bool = False) -> TrainResult:
        require_torch()
        import torch
        from peft import LoraConfig, get_peft_model

        from mirador.learn.gguf_convert import load_model

        if not train:
            raise MiradorError("no training examples")
        torch.manual_seed(hp.seed)
        rng = random.Random(hp.seed)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer = load_model(base_dir)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        train_rows = [encode(tokenizer, m, hp.max_seq_len) for m in train]
        valid_rows = [encode(tokenizer, m, hp.max_seq_len) for m in valid]
        model.to(device)
        valid_before = mean_loss(model, valid_rows, pad, device) if valid_rows else float("nan")
        base_samples = {p: generate(model, tokenizer, p, device) for p in (sanity_prompts or [])} if sample_base else {}

        n_layers = model.config.num_hidden_layers
        layers = list(range(n_layers - hp.layers, n_layers)) if 0 < hp.layers < n_layers else None
        config = LoraConfig(r=hp.rank, lora_alpha=hp.alpha, lora_dropout=0.0, bias="none",
                            target_modules=list(hp.targets), layers_to_transform=layers, task_type="CAUSAL_LM")
        model = get_peft_model(model, config)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=hp.lr)

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
            for _ in range(hp.batch_size):
                if not order:
                    order = list(range(len(train_rows)))
                    rng.shuffle(order)
                batch.append(train_rows[order.pop()])
            ids, labels, mask = _batches(batch, hp.batch_size, pad, device)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            tokens += int(mask.sum())
            if progress is not None:
                progress(step + 1, hp.iterations, losses[-1], tokens)
        seconds = time.monotonic() - start

        valid_after = mean_loss(model, valid_rows, pad, device) if valid_rows else float("nan")
        samples = {p: generate(model, tokenizer, p, device) for p in (sanity_prompts or [])}
        adapter_dir = out_dir / "peft"
        model.save_pretrained(str(adapter_dir))
        return TrainResult(adapter_dir=adapter_dir, steps=len(losses), train_tokens=tokens, seconds=seconds,
                           losses=losses, valid_before=valid_before, valid_after=valid_after, stopped_early=stopped,
                           samples=samples, base_samples=base_samples)


def generate(model: Any, tokenizer: Any, prompt: str, device: Any, max_new_tokens: int = 40) -> str:
    """A greedy answer, for the sanity check that the adapter left the model coherent."""
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
