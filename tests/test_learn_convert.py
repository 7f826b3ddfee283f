"""GGUF → Hugging Face conversion: the converted model chooses the same next tokens as llama.cpp."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="training needs torch: pip install 'mirador[train-torch]'")
pytest.importorskip("transformers", reason="training needs transformers: pip install 'mirador[train-torch]'")
pytest.importorskip("gguf", reason="training needs gguf: pip install 'mirador[train-torch]'")

from llamaproc import smollm2_gguf  # noqa: E402

from mirador.learn.gguf_convert import ConversionError, converted_dir, load_model  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "1, 2, 3, 4, 5,",
    "<|im_start|>user\nWhat colour is the sky?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n",
    "Monday, Tuesday, Wednesday,",
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    return converted_dir(smollm2_gguf(), root=root), root


def test_the_converted_model_makes_the_gguf_models_next_token_choices(converted):
    import numpy as np
    import torch
    from llama_cpp import Llama

    folder, _ = converted
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    model, tokenizer = load_model(folder)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    llm = Llama(model_path=str(smollm2_gguf()), n_ctx=256, verbose=False, n_threads=2, logits_all=True)
    agree = 0
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        # Same tokenizer: the HF one built from the GGUF vocabulary and merges splits text the same way.
        assert tokenizer(prompt, add_special_tokens=False).input_ids == ids, prompt
        llm.reset()
        llm.eval(ids)
        gguf_next = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        with torch.no_grad():
            hf_next = int(model(torch.tensor([ids])).logits[0, -1].argmax())
        agree += hf_next == gguf_next
    # llama.cpp multiplies Q4_1 weights with 8-bit activations: a near tie may flip, a real error flips all.
    assert agree >= len(PROMPTS) - 1, f"{agree}/{len(PROMPTS)} next tokens agree"


def test_conversion_is_cached_by_digest(converted):
    folder, root = converted
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert converted_dir(smollm2_gguf(), root=root) == folder  # no second conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert folder.name == __import__("mirador.learn.gguf_convert", fromlist=["x"]).sha256_file(smollm2_gguf())
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_a_lora_file_is_refused_with_a_clear_error(tmp_path):
    from ggufwriter import write_gguf

    path = write_gguf(tmp_path / "x.gguf", {"general.architecture": "gpt2"}, {})
    with pytest.raises(ConversionError, match="llama"):
        converted_dir(path, root=tmp_path / "base")
