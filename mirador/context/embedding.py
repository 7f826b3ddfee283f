"""The embedder the context compiler scores with, and a dependency-free fallback.

The compiler takes any object with `name` and `embed(texts) -> result with
.vectors` (rows unit length), i.e. mirador.memory.embed's Embedder. By default
that is the local all-MiniLM-L6-v2; where its weights are not installed, a
hashing embedder (word and word-pair features, no model) keeps the compiler
working: centrality and relevance then rest on shared words alone.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_WORDS = re.compile(r"[a-z0-9]+")
# Function words say nothing about what a sentence is about (English only; a fallback after all).
STOPWORDS = frozenset("a an the and or but if of to in on at by for with from as is are was were be been it its this "
                      "that i you we they me my your our what which who how why when where do does did can could "
                      "should would will not no so just about know".split())


@dataclass(frozen=True)
class Vectors:
    vectors: Any  # numpy array [n, dimension], rows unit length (or zero for an empty text)


class HashingEmbedder:
    """Bag of words and word pairs hashed into a fixed width: deterministic, instant, no weights."""

    dimension = 1024

    def __init__(self, dimension: int = 1024):
        self.dimension = dimension
        self.name = f"hashing:{dimension}"

    def embed(self, texts: str | Sequence[str]) -> Vectors:
        import numpy as np

        items = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(items), self.dimension), dtype=np.float32)
        for row, text in enumerate(items):
            words = [w for w in _WORDS.findall(text.lower()) if w not in STOPWORDS]
            # Words, their 5-letter stems (allergy ~ allergic) and word pairs.
            features = words + [f"~{w[:5]}" for w in words if len(w) > 5]
            for feature in features + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]:
                out[row, zlib.crc32(feature.encode()) % self.dimension] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return Vectors(out)


def default_embedder(provider: str = "local", model: str | None = None, host: str | None = None) -> Any:
    """The memory package's embedder when it is there and its model is installed, else hashing."""
    try:
        from mirador.memory.embed import get_embedder
    except ImportError:
        return HashingEmbedder()
    embedder = get_embedder(provider, model, host)
    if provider == "local":
        from mirador.context.tokens import minilm_tokenizer_file

        if minilm_tokenizer_file() is None:  # the weights package is not installed
            return HashingEmbedder()
    return embedder
