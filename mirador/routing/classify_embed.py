"""The refined path: the query's embedding against each domain's example queries.

Any embedder with `name` and an async `aembed(texts) -> result.vectors`
(mirador.memory.embed: the offline all-MiniLM-L6-v2, or /api/embed on the
server) will do. The examples are embedded once per embedder and set of
examples and kept in the data dir, so a query costs exactly one embedding.

A domain's similarity is the mean of its best few example similarities; it is
added to the fast path's keyword evidence rather than replacing it, so a
clear keyword ("translate") still counts when the wording is unusual.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from mirador.config import Paths, paths
from mirador.routing.classify import QueryAnalysis, analyse, fast_scores, split_sections
from mirador.routing.schema import CapabilityMatrix

TOP_K = 3
# Keyword points per unit of cosine similarity: 0.1 of similarity ≈ one keyword.
EMBED_WEIGHT = 10.0
# The embedded text: the instruction plus the start of any material (MiniLM reads 256 word pieces at most).
MATERIAL_CHARS = 300


class ExampleBank(NamedTuple):
    embedder: str
    vectors: Any  # numpy float32 [n, dimension], unit rows
    labels: tuple[str, ...]


def embedding_text(query: str) -> str:
    sections = split_sections(query)
    text = sections.instruction
    if sections.material:
        text += "\n" + sections.material[:MATERIAL_CHARS]
    return text.strip() or query[:MATERIAL_CHARS]


def _examples(matrix: CapabilityMatrix) -> tuple[list[str], tuple[str, ...]]:
    texts: list[str] = []
    labels: list[str] = []
    for domain in matrix.domains.values():
        texts += domain.examples
        labels += [domain.name] * len(domain.examples)
    return texts, tuple(labels)


def bank_file(p: Paths, embedder_name: str, texts: list[str], labels: tuple[str, ...]) -> Path:
    key = hashlib.sha256(json.dumps([texts, labels]).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", embedder_name)
    return p.data_dir / "cache" / f"routing-examples-{slug}-{key}.npy"


def bank_cached(embedder_name: str, matrix: CapabilityMatrix, p: Paths | None = None) -> bool:
    """Whether the examples' vectors for this embedder are cached: then a refined decision costs one
    embedding, not the whole bank (a first run embeds every example, seconds on a laptop)."""
    texts, labels = _examples(matrix)
    return bank_file(p or paths(), embedder_name, texts, labels).exists()


async def example_bank(embedder: Any, matrix: CapabilityMatrix, p: Paths | None = None) -> ExampleBank:
    """The examples' vectors: from the cache, or embedded now (once) and cached."""
    import numpy as np

    texts, labels = _examples(matrix)
    file = bank_file(p or paths(), embedder.name, texts, labels)
    try:
        vectors = np.load(file, allow_pickle=False)
        if vectors.shape[0] == len(texts):
            return ExampleBank(embedder.name, vectors, labels)
    except (OSError, ValueError):
        pass
    vectors = np.asarray((await embedder.aembed(texts)).vectors, dtype=np.float32)
    _save(file, vectors)
    return ExampleBank(embedder.name, vectors, labels)


def _save(file: Path, vectors: Any) -> None:
    import os
    import tempfile

    import numpy as np

    try:
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".routing-", suffix=".npy", dir=file.parent)
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, vectors, allow_pickle=False)
        os.replace(tmp, file)
    except OSError:
        pass  # unwritable data dir: the next query embeds the examples again


def similarity_scores(vector: Any, bank: ExampleBank, domains: list[str], top_k: int = TOP_K) -> dict[str, float]:
    """Per domain, the mean cosine similarity of its top_k closest examples."""
    import numpy as np

    query = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(query)) or 1.0
    sims = bank.vectors @ (query / norm)
    labels = np.asarray(bank.labels)
    out: dict[str, float] = {}
    for domain in domains:
        mine = np.sort(sims[labels == domain])[::-1][:top_k]
        out[domain] = float(mine.mean()) if mine.size else 0.0
    return out


def combine(fast: dict[str, float], similar: dict[str, float], weight: float = EMBED_WEIGHT) -> dict[str, float]:
    return {domain: fast.get(domain, 0.0) + weight * similar.get(domain, 0.0) for domain in fast}


async def classify_refined(query: str, matrix: CapabilityMatrix, embedder: Any, p: Paths | None = None
                           ) -> QueryAnalysis:
    """Keyword evidence plus example similarity; one embedding of the query."""
    import asyncio

    evidence, signals = fast_scores(query, matrix)
    bank, result = await asyncio.gather(example_bank(embedder, matrix, p),
                                        embedder.aembed([embedding_text(query)]))
    similar = similarity_scores(result.vectors[0], bank, list(matrix.domains))
    analysis = analyse(query, matrix, combine(evidence, similar), signals, embedder.name)
    return analysis._replace(signals={**analysis.signals, "~similarity": tuple(
        f"{d} {s:.2f}" for d, s in sorted(similar.items(), key=lambda kv: -kv[1]))})
