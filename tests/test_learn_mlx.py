"""The mlx training backend on a tiny random-weight llama built here (MLX on a Linux CPU is slow): the loss
falls, the adapter round-trips through mlx-lm's format, PEFT's layout and GGUF LoRA, and torch and mlx see
the same model and the same loss masking (the same loss before any update)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mirador.errors import MiradorError

TOPICS = ["the sea", "bread", "rain", "cats", "trains", "music", "winter", "coffee", "books", "stars", "maps",
          "clocks"]
INIT_STD = 0.3  # wider than transformers' 0.02: a random model with some structure for LoRA to bend quickly
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def chat(topic: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Tell me about {topic}."},
            {"role": "assistant", "content": f"Ahoy matey! {topic.capitalize()} be a fine thing, arr."}]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-block llama (hidden 64) with a byte-level BPE tokenizer and a ChatML template, as an HF folder:
    the layout gguf_convert.converted_dir produces. RoPE base 100,000 like SmolLM2's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mirador.learn.gguf_convert import _save

    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    corpus = [m["content"] for t in TOPICS + ["rivers", "What is the capital of France?"] for m in chat(t)]
    bpe.train_from_iterator(corpus * 4, trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                                     pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=INIT_STD,
        bos_token_id=None)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    _save(model, folder)  # as gguf_convert writes a converted GGUF: the tied embedding once, maybe as lm_head
    return folder


def mlx_or_skip() -> None:
    pytest.importorskip("mlx.core", reason="the mlx backend needs mlx: pip install 'mlx[cpu]' mlx-lm")
    pytest.importorskip("mlx_lm", reason="the mlx backend needs mlx-lm")


def hyper(**overrides):
    from mirador.learn.trainers.base import Hyperparams

    values = {"rank": 8, "alpha": 16.0, "lr": 1e-2, "iterations": 12, "max_seq_len": 64, "seed": 3,
              "targets": ("q_proj", "k_proj", "v_proj", "o_proj")}
    return Hyperparams(**{**values, **overrides})


def test_mlx_lora_lowers_the_loss_and_the_adapter_round_trips(tiny_llama, tmp_path):
    mlx_or_skip()
    import gguf
    import mlx.core as mx
    import numpy as np
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file

    from mirador.learn.export import export_gguf_lora, mlx_to_peft
    from mirador.learn.gguf_convert import load_model
    from mirador.learn.trainers import mlx_lora
    from mirador.learn.trainers.base import get_trainer
    from mirador.learn.trainers.torch_lora import encode

    train, valid = [chat(t) for t in TOPICS[:-2]], [chat(t) for t in TOPICS[-2:]]
    hp = hyper(layers=1, lr=2e-2, iterations=20)  # LoRA on the last block only: the export keeps its number
    calls: list[tuple[int, int, float, int]] = []
    result = get_trainer("mlx").train(tiny_llama, train, valid, tmp_path, hp, sanity_prompts=["Tell me about rivers."],
                                      progress=lambda *args: calls.append(args), sample_base=True)
    losses = result.losses
    assert [c[0] for c in calls] == list(range(1, 21)) and calls[-1][1] == 20 and calls[-1][3] == result.train_tokens
    assert [c[2] for c in calls] == losses and list(result.base_samples) == ["Tell me about rivers."]
    assert result.steps == 20 and result.train_tokens > 0 and result.tokens_per_s > 0
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.7, losses  # the training loss falls
    assert result.valid_after < result.valid_before, (result.valid_before, result.valid_after)

    # mlx-lm's own layout: mlx_lm.load(adapter_path=…) rebuilds the trained model exactly.
    adapter = result.adapter_dir
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["num_layers"] == 1 and config["lora_parameters"]["scale"] == 16.0 / 8
    model, tokenizer = mlx_lora.load_base(tiny_llama, adapter)
    rows = [encode(tokenizer._tokenizer, m, hp.max_seq_len) for m in valid]
    assert math.isclose(mlx_lora.mean_loss(model, rows), result.valid_after, rel_tol=1e-5)
    assert mlx_lora.generate(model, tokenizer, "Tell me about rivers.") == result.samples["Tell me about rivers."]

    # PEFT's layout: the same function of the input in torch (transposes and alpha = scale · r right).
    peft_dir = mlx_to_peft(adapter, tmp_path / "peft")
    peft_config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert peft_config["r"] == 8 and peft_config["lora_alpha"] == 16.0 and peft_config["layers_to_transform"] == [1]
    peft_tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    assert len(peft_tensors) == 2 * 4  # A and B for q, k, v, o of block 1
    q_a = peft_tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"]
    k_b = peft_tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"]
    assert q_a.shape == (8, 64) and k_b.shape == (2 * 16, 8)  # [r, in], [out = kv heads · head dim, r]
    assert np.abs(k_b).max() > 0  # B moved away from its zero start
    ids = encode(tokenizer._tokenizer, valid[0], hp.max_seq_len)[0]
    mlx_logits = np.array(model(mx.array([ids])))
    base, _ = load_model(tiny_llama)
    tuned = PeftModel.from_pretrained(base, str(peft_dir)).eval()
    with torch.no_grad():
        torch_logits = tuned(input_ids=torch.tensor([ids])).logits.numpy()
        tuned.disable_adapter_layers()
        base_logits = tuned(input_ids=torch.tensor([ids])).logits.numpy()
    assert np.abs(mlx_logits - torch_logits).max() < 1e-3
    assert np.abs(base_logits - torch_logits).max() > 1e-2  # and the adapter does change them

    # GGUF LoRA, what `mirador serve` loads: names, GGUF dims, alpha.
    out = export_gguf_lora(adapter, tmp_path / "adapter.gguf", n_head=4, n_head_kv=2)
    reader = gguf.GGUFReader(str(out))
    shapes = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    assert shapes["blk.1.attn_q.weight.lora_a"] == [64, 8] and shapes["blk.1.attn_q.weight.lora_b"] == [8, 64]
    assert shapes["blk.1.attn_k.weight.lora_b"] == [8, 32] and len(shapes) == 8
    alpha = reader.fields["adapter.lora.alpha"]
    assert float(alpha.parts[alpha.data[0]][0]) == 16.0


def test_torch_and_mlx_start_from_the_same_loss(tiny_llama, tmp_path):
    """Same base weights, same tokens, same mask: the loss before any update agrees; a few steps on they are
    in the same ballpark (A starts from each framework's own random draw; the same AdamW, bias-corrected)."""
    mlx_or_skip()
    pytest.importorskip("peft")
    from mirador.learn.trainers.base import get_trainer

    train, valid = [chat(t) for t in TOPICS[:-2]], [chat(t) for t in TOPICS[-2:]]
    hp = hyper(iterations=6, batch_size=2)
    by_torch = get_trainer("torch").train(tiny_llama, train, valid, tmp_path / "torch", hp)
    by_mlx = get_trainer("mlx").train(tiny_llama, train, valid, tmp_path / "mlx", hp)
    assert math.isclose(by_torch.valid_before, by_mlx.valid_before, rel_tol=1e-4)
    assert math.isclose(by_torch.losses[0], by_mlx.losses[0], rel_tol=1e-4)
    assert by_torch.train_tokens == by_mlx.train_tokens  # the same batches in the same order
    last_torch, last_mlx = sum(by_torch.losses[-3:]) / 3, sum(by_mlx.losses[-3:]) / 3
    assert 0.8 < last_mlx / last_torch < 1.25, (by_torch.losses, by_mlx.losses)
    assert 0.9 < by_mlx.valid_after / by_torch.valid_after < 1.1, (by_torch.valid_after, by_mlx.valid_after)
    assert by_mlx.valid_after < by_mlx.valid_before * 0.9


def test_the_mlx_backend_stops_at_the_deadline(tiny_llama, tmp_path):
    mlx_or_skip()
    import time

    from mirador.learn.trainers.base import get_trainer

    result = get_trainer("mlx").train(tiny_llama, [chat("rain")], [], tmp_path, hyper(), deadline=time.monotonic())
    assert result.steps == 0 and "time budget reached after 0 of 12 steps" in (result.stopped_early or "")


def test_a_missing_mlx_names_the_package_to_install(monkeypatch):
    import sys

    from mirador.learn.trainers.base import get_trainer

    monkeypatch.setitem(sys.modules, "mlx_lm", None)  # `import mlx_lm` now raises ImportError
    with pytest.raises(MiradorError) as info:
        get_trainer("mlx")
    assert "mlx" in str(info.value) and "pip install" in (info.value.hint or "")


def test_the_default_backend_is_mlx_on_apple_silicon_only(monkeypatch):
    import platform

    from mirador.learn.trainers.base import resolve_backend

    for system, machine, want in [("Darwin", "arm64", "mlx"), ("Darwin", "x86_64", "torch"),
                                  ("Linux", "x86_64", "torch"), ("Linux", "aarch64", "torch")]:
        monkeypatch.setattr(platform, "system", lambda s=system: s)
        monkeypatch.setattr(platform, "machine", lambda m=machine: m)
        assert resolve_backend("auto") == want and resolve_backend(None) == want
    assert resolve_backend("torch") == "torch"


def test_an_mlx_adapter_exported_to_gguf_moves_llama_cpp_as_it_moves_mlx(tmp_path):
    """The deploy path for the mlx backend: an mlx-lm adapter on SmolLM2 (random, non-zero B on q/k/v/o of
    10 blocks) exported to GGUF LoRA changes llama.cpp's logits the way it changes MLX's. A wrong Q/K row
    permutation, transpose or alpha breaks the agreement (permutation left out: correlation ~0.65)."""
    mlx_or_skip()
    pytest.importorskip("llama_cpp", reason="llama.cpp runs the exported adapter: pip install 'mirador[serve]'")
    import mlx.core as mx
    import numpy as np
    from llama_cpp import Llama
    from llamaproc import smollm2_gguf
    from mlx.utils import tree_flatten

    from mirador.learn.export import export_gguf_lora
    from mirador.learn.gguf_convert import converted_dir
    from mirador.learn.trainers import mlx_lora
    from mirador.learn.trainers.base import Hyperparams

    base_dir = converted_dir(smollm2_gguf(), root=tmp_path / "base")
    model, tokenizer = mlx_lora.load_base(base_dir)
    base_model, _ = mlx_lora.load_base(base_dir)
    config = mlx_lora.add_lora(model, Hyperparams(rank=4, alpha=8.0, layers=10,
                                                  targets=("q_proj", "k_proj", "v_proj", "o_proj")))
    mx.random.seed(1)
    model.load_weights([(k, mx.random.normal(v.shape) * 0.4) for k, v in tree_flatten(model.trainable_parameters())
                        if k.endswith("lora_b")], strict=False)
    adapter = mlx_lora.save_adapter(model, config, tmp_path / "mlx")
    exported = export_gguf_lora(adapter, tmp_path / "adapter.gguf", n_head=9, n_head_kv=3)

    text = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about rivers."}], tokenize=False,
                                         add_generation_prompt=True) + "Rivers are"
    ids = tokenizer._tokenizer(text, add_special_tokens=False).input_ids
    mlx_delta = np.array(model(mx.array([ids]))[0]) - np.array(base_model(mx.array([ids]))[0])

    def llama_cpp_logits(lora: Path | None) -> np.ndarray:
        extra = {"lora_path": str(lora)} if lora else {}
        llm = Llama(model_path=str(smollm2_gguf()), n_ctx=256, verbose=False, logits_all=True, n_threads=2, **extra)
        llm.eval(ids)
        return np.asarray(llm.scores[:llm.n_tokens], dtype=np.float64)

    cpp_delta = llama_cpp_logits(exported) - llama_cpp_logits(None)
    # llama.cpp runs the Q4_1 weights, MLX their float32 dequantization: about 0.2 of noise per logit, where
    # the adapter moves them by about 1.5.
    assert np.corrcoef(mlx_delta.ravel(), cpp_delta.ravel())[0, 1] > 0.95
    assert 0.8 < np.abs(cpp_delta).mean() / np.abs(mlx_delta).mean() < 1.25
