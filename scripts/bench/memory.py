"""Pattern memory: Chroma against brute-force NumPy, local embedding speed, and ask's first token.

1. Store: for each size (default 10,000 and 100,000 synthetic 384-d patterns), insert
   throughput and top-8 query p50/p95 of ChromaDB (PersistentClient, HNSW, cosine)
   against brute-force NumPy cosine over the same vectors (the baseline).
2. Local embedding (all-MiniLM-L6-v2 in NumPy): sentences/s in batches, one query's
   embedding time, and that as a fraction of a stage-1 answer (scripted server, a 1B
   model's figures: 150 ms to first token, 96 tokens at 60 tokens/s).
3. Whole-process time to first token of `mirador ask` (planned 3-stage chain), memory
   on (store present, rated patterns, learned scores) versus off (MIRADOR_MEMORY=0).
   Target: at most 1.1x.
Run: .venv/bin/python scripts/bench/memory.py [--sizes 10000,100000] [--runs 15]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import (
    MIRADOR,
    bench_env,
    interleaved,
    median_ms,
    print_table,
    scripted_server,
    time_to_first_byte,
)

DIM = 384
QUERIES = 200
K = 8


def synthetic(n: int, seed: int) -> np.ndarray:
    """Clustered unit vectors (topics with spread), closer to real queries than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, n // 200), DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) * 1000


def bench_store(n: int) -> list[tuple[str, str, str]]:
    import chromadb
    from chromadb.config import Settings

    vectors = synthetic(n, n)
    queries = synthetic(QUERIES, n + 1)
    rows = []
    # Baseline: NumPy brute force. "Insert" is appending to a float32 matrix.
    started = time.perf_counter()
    matrix = np.empty((0, DIM), np.float32)
    for start in range(0, n, 5000):
        matrix = np.concatenate([matrix, vectors[start:start + 5000]])
    numpy_insert = n / (time.perf_counter() - started)
    numpy_times = []
    for q in queries:
        t = time.perf_counter()
        scores = matrix @ q
        top = np.argpartition(-scores, K)[:K]
        top[np.argsort(-scores[top])]
        numpy_times.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as folder:
        client = chromadb.PersistentClient(path=folder, settings=Settings(anonymized_telemetry=False))
        col = client.create_collection("bench", embedding_function=None, metadata={"hnsw:space": "cosine"})
        started = time.perf_counter()
        batch = 5000
        for start in range(0, n, batch):
            part = vectors[start:start + batch]
            col.add(ids=[str(i) for i in range(start, start + len(part))], embeddings=part,
                    documents=[f"query {i}" for i in range(start, start + len(part))],
                    metadatas=[{"rating": i % 6, "domain": "coding"} for i in range(start, start + len(part))])
        chroma_insert = n / (time.perf_counter() - started)
        chroma_times = []
        recall = 0
        for q in queries:
            t = time.perf_counter()
            got = col.query(query_embeddings=[q.tolist()], n_results=K, include=["distances"])
            chroma_times.append(time.perf_counter() - t)
            truth = set(np.argpartition(-(matrix @ q), K)[:K].tolist())
            recall += len(truth & {int(i) for i in got["ids"][0]})
    p50, p95 = percentile_ms(numpy_times, 50), percentile_ms(numpy_times, 95)
    c50, c95 = percentile_ms(chroma_times, 50), percentile_ms(chroma_times, 95)
    rows.append((f"{n:,} numpy brute force", f"p50 {p50:.2f} / p95 {p95:.2f} ms", f"insert {numpy_insert:,.0f}/s"))
    rows.append((f"{n:,} chroma (HNSW)", f"p50 {c50:.2f} / p95 {c95:.2f} ms (x{c50 / p50:.2f} / x{c95 / p95:.2f})",
                 f"insert {chroma_insert:,.0f}/s (x{chroma_insert / numpy_insert:.4f}); "
                 f"recall@{K} {recall / (K * QUERIES):.3f}"))
    return rows


def bench_embedding() -> list[tuple[str, str, str]]:
    from mirador.memory.embed import LocalEmbedder

    sentences = [f"how do I fix error number {i} in my python script when sorting a list of dicts" for i in range(256)]
    embedder = LocalEmbedder(threads=None)
    embedder.embed(sentences[:4])  # weights loaded: that cost is paid in the background, once
    started = time.perf_counter()
    embedder.embed(sentences)
    bulk = len(sentences) / (time.perf_counter() - started)
    single = LocalEmbedder(threads=1)
    times = []
    for s in sentences[:40]:
        t = time.perf_counter()
        single.embed([s])
        times.append(time.perf_counter() - t)
    one = float(np.median(times))
    stage1 = 0.150 + 96 / 60  # a 1B model's quick acknowledgment (see the docstring)
    return [("local embedding, batches of 32", f"{bulk:,.0f} sentences/s", "all cores"),
            ("local embedding, one query", f"{one * 1000:.1f} ms", f"{one / stage1:.1%} of a stage-1 answer "
                                                                    f"({stage1 * 1000:.0f} ms)")]


def bench_ttft(runs: int) -> tuple[list[tuple[str, str, str]], float]:
    models = {name: {"text": "Hello there, this is a benchmark answer.", "load_time": 0, "ttft": 0, "rate": 0,
                     "parameter_size": size}
              for name, size in [("llama3.2:1b", "1.2B"), ("qwen2.5-coder:7b", "7.6B"), ("llama3.1:8b", "8.0B")]}
    question = "fix the bug in my python sort function"
    with scripted_server(models) as (host, _), tempfile.TemporaryDirectory() as home:
        env = bench_env(home, host)
        env["MIRADOR_POWER"] = "plugged"
        for score in ("5", "4"):  # a store, rated patterns and learned scores: every memory path is live
            subprocess.run([MIRADOR, "ask", question], env=env, capture_output=True, check=True)
            subprocess.run([MIRADOR, "rate", score], env=env, capture_output=True, check=True)
        assert (Path(home) / "data" / "chroma").is_dir()
        off = {**env, "MIRADOR_MEMORY": "0"}
        samples = interleaved(runs, {
            "memory off": lambda: time_to_first_byte([MIRADOR, "ask", question], off),
            "memory on": lambda: time_to_first_byte([MIRADOR, "ask", question], env),
        })
        time.sleep(3)  # let the last detached memory sync finish before the home goes away
    base = median_ms(samples["memory off"])
    rows = [(name, f"{median_ms(v):.1f} ms", f"x{median_ms(v) / base:.2f}") for name, v in samples.items()]
    return rows, median_ms(samples["memory on"]) / base


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated store sizes")
    parser.add_argument("--runs", type=int, default=15, help="ask runs per side for the first-token figure")
    parser.add_argument("--skip-store", action="store_true")
    args = parser.parse_args()
    if not args.skip_store:
        rows = [("patterns", "top-8 query", "insert")]
        for n in (int(s) for s in args.sizes.split(",") if s.strip()):
            rows += bench_store(n)
        print_table(f"pattern store: chroma vs brute-force numpy cosine ({QUERIES} queries, {DIM}-d)", rows)
    print_table("local embedding (all-MiniLM-L6-v2, NumPy)", [("what", "figure", "note"), *bench_embedding()])
    rows, ratio = bench_ttft(args.runs)
    print_table(f"mirador ask, whole process, time to first token, median of {args.runs} (target: at most 1.1x)",
                [("memory", "median to first byte", "x off"), *rows])
    print(f"\nresult: {'PASS' if ratio <= 1.1 else 'FAIL'} (ratio {ratio:.2f})")
    return 0 if ratio <= 1.1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
