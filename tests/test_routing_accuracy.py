"""Classifier accuracy on the labeled set: fast path >= 70%, offline-embedding classifier >= 85%.

The same figures, with timings, come from `.venv/bin/python scripts/bench/routing.py`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mirador.routing.classify import classify_fast
from mirador.routing.matrix import load_matrix

LABELED = Path(__file__).parent / "data" / "labeled_queries.yaml"


@pytest.fixture(scope="module")
def labeled() -> list[dict[str, str]]:
    return yaml.safe_load(LABELED.read_text(encoding="utf-8"))


@pytest.fixture
def matrix(mirador_home):
    return load_matrix()


def test_the_labeled_set_is_large_varied_and_not_the_examples(labeled, matrix):
    assert len(labeled) >= 120 and len([i for i in labeled if i.get("holdout")]) >= 40
    counts = Counter(item["domain"] for item in labeled)
    assert set(counts) == set(matrix.domains) and min(counts.values()) >= 15
    examples = {e.lower().strip() for d in matrix.domains.values() for e in d.examples}
    assert not [item["query"] for item in labeled if item["query"].lower().strip() in examples]
    assert len({item["query"] for item in labeled}) == len(labeled)


def test_fast_path_accuracy(labeled, matrix):
    for items in (labeled, [i for i in labeled if i.get("holdout")]):
        wrong = [(i["domain"], classify_fast(i["query"], matrix).domain, i["query"][:60]) for i in items
                 if classify_fast(i["query"], matrix).domain != i["domain"]]
        accuracy = 1 - len(wrong) / len(items)
        assert accuracy >= 0.70, f"fast path {accuracy:.1%} on {len(items)}; misses: {wrong}"


def test_offline_embedding_classifier_accuracy(labeled, matrix):
    embed = pytest.importorskip("mirador.memory.embed")
    from mirador.routing.classify_embed import classify_refined

    embedder = embed.get_embedder("local")

    async def run() -> list[str]:
        return [(await classify_refined(item["query"], matrix, embedder)).domain for item in labeled]

    got = asyncio.run(run())
    pairs = list(zip(labeled, got, strict=True))
    for rows in (pairs, [(i, g) for i, g in pairs if i.get("holdout")]):
        wrong = [(i["domain"], g, i["query"][:60]) for i, g in rows if g != i["domain"]]
        accuracy = 1 - len(wrong) / len(rows)
        assert accuracy >= 0.85, f"embedding classifier {accuracy:.1%} on {len(rows)}; misses: {wrong}"


def test_the_example_vectors_are_cached_so_a_query_costs_one_embedding(matrix, mirador_home):
    embed = pytest.importorskip("mirador.memory.embed")
    from mirador.routing.classify_embed import classify_refined

    class Counting:
        def __init__(self, inner):
            self.inner, self.name, self.calls = inner, inner.name, []

        async def aembed(self, texts):
            self.calls.append(len(texts))
            return await self.inner.aembed(texts)

    first = Counting(embed.get_embedder("local"))
    asyncio.run(classify_refined("my python function returns None instead of the list", matrix, first))
    assert sorted(first.calls) == [1, sum(len(d.examples) for d in matrix.domains.values())]
    second = Counting(embed.get_embedder("local"))
    analysis = asyncio.run(classify_refined("my python function returns None instead of the list", matrix, second))
    assert second.calls == [1]  # the examples came from the data dir
    assert analysis.path == "local:all-MiniLM-L6-v2" and analysis.domain == "coding"
    assert list((mirador_home / "data" / "cache").glob("routing-examples-local_all-MiniLM-L6-v2-*.npy"))
