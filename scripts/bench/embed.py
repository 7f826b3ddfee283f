"""Offline embeddings (the NumPy all-MiniLM-L6-v2): throughput and the per-question cost.

Throughput in sentences/s for batch sizes 1, 8 and 32 over short queries and over
paragraphs, each set against NumPy's own float32 matmul doing the same number of
floating-point operations in the same run ("efficiency vs peak matmul": the share
of the BLAS speed the whole model keeps, tokenizer, attention and GELU included).
Rows run with the embedder's default of one BLAS thread, and once with all of them.
The single-query time is what the router and the memory pay per question; it is
set against `python -c pass`, and the first query of a fresh process (imports and
weight loading included) is shown too.

Run: .venv/bin/python scripts/bench/embed.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from benchlib import PYTHON, median_ms, wall_time

QUERIES = [
    "How do I reverse a list in Python?",
    "What is the capital of Australia?",
    "Summarise this email in two sentences",
    "Why does my laptop battery drain so fast?",
    "Translate 'good morning' into Japanese",
    "Write a haiku about autumn rain",
    "What's the difference between TCP and UDP?",
    "Explain recursion to a ten year old",
    "Best way to learn linear algebra quickly",
    "How many grams of protein are in an egg?",
    "Fix this SQL: SELECT * FORM users",
    "Is it safe to run rm -rf in a docker container?",
    "Convert 72 Fahrenheit to Celsius",
    "Who wrote The Master and Margarita?",
    "Give me three ideas for a birthday dinner",
    "What does HTTP status 503 mean?",
]
SENTENCES = [
    "Energy-aware scheduling on laptops trades latency against battery life.",
    "A small model answers first and a larger one refines the answer only when the question is hard.",
    "On mains power the larger model may be preloaded speculatively while the first stage streams.",
    "The router learns which models a user rates highly for which kinds of question.",
    "The memory of past answers lets it skip work it has already done.",
    "None of this should delay the first token: the fast path imports nothing heavy.",
    "Slower knowledge arrives in parallel and serves the later stages of the chain.",
    "Each stage sees the query, the compiled context and the text of every earlier stage.",
]


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def paragraphs(count: int) -> list[str]:
    """Paragraph-length texts (about 110-150 word pieces), each a different mix."""
    out = []
    for i in range(count):
        picks = [SENTENCES[(i + k * 3) % len(SENTENCES)] for k in range(5 + i % 3)]
        out.append(f"Note {i}: " + " ".join(picks))
    return out


def model_flops(tokens: list[int]) -> float:
    """Multiply-adds x 2 of the network on the real (unpadded) tokens of each text."""
    d, ffn, layers = 384, 1536, 6
    dense = 2 * (d * 3 * d + d * d + 2 * d * ffn)  # per token per layer: qkv, output, two FFN matmuls
    return float(sum(layers * n * (dense + 2 * 2 * n * d) for n in tokens))  # + scores and context


class Matmul:
    """The baseline: NumPy float32 matmul at the model's biggest shape (tokens x 384 @ 384 x 1536)."""

    def __init__(self) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((512, 384), dtype=np.float32)
        self.b = rng.standard_normal((384, 1536), dtype=np.float32)
        self.flops_per_call = 2 * 512 * 384 * 1536
        self.a @ self.b

    def seconds_for(self, flops: float) -> float:
        """Time NumPy takes for `flops` floating-point operations of plain matmul."""
        calls = max(1, round(flops / self.flops_per_call))
        start = time.perf_counter()
        for _ in range(calls):
            self.a @ self.b
        return (time.perf_counter() - start) * flops / (calls * self.flops_per_call)


def timed_embed(texts: list[str], batch_size: int, threads: int | None) -> float:
    from mirador.memory.embed import LocalEmbedder

    start = time.perf_counter()
    LocalEmbedder(batch_size=batch_size, threads=threads).embed(texts)
    return time.perf_counter() - start


FIRST_QUERY = """
import time
t = time.perf_counter()
from mirador.memory.embed import LocalEmbedder
LocalEmbedder().embed(["How do I reverse a list in Python?"])
print(time.perf_counter() - t)
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from mirador.memory import minilm

    model = minilm.load()
    matmul = Matmul()
    sets = {"short queries": QUERIES * 4, "paragraphs": paragraphs(32)}
    rows = [("texts", "batch", "BLAS threads", "pieces/text", "sentences/s", "ms", "matmul ms", "efficiency",
             "matmul GFLOP/s")]
    for label, texts in sets.items():
        tokens = [len(e.ids) for e in model.tokenizer.encode_batch(texts)]
        flops = model_flops(tokens)
        for threads, batch in [(1, 1), (1, 8), (1, 32), (None, 32)]:
            # Model and baseline alternate, so drift in the machine's load hits both;
            # the least disturbed run of each counts (other work only ever adds time).
            # The baseline runs with the same BLAS thread cap as the model.
            seconds = baseline = float("inf")
            for _ in range(args.rounds):
                seconds = min(seconds, timed_embed(texts, batch, threads))
                with minilm._blas_threads(threads):
                    baseline = min(baseline, matmul.seconds_for(flops))
            rows.append((label, str(batch), "all" if threads is None else str(threads),
                         f"{statistics.mean(tokens):.0f}", f"{len(texts) / seconds:.0f}", f"{seconds * 1000:.0f}",
                         f"{baseline * 1000:.0f}", f"{baseline / seconds:.0%}", f"{flops / baseline / 1e9:.0f}"))
    print_table("local embedding throughput; baseline: NumPy float32 matmul doing the same FLOPs", rows)

    from mirador.memory.embed import LocalEmbedder

    embedder = LocalEmbedder()
    single = []
    for query in QUERIES * 3:
        start = time.perf_counter()
        embedder.embed([query])
        single.append(time.perf_counter() - start)
    runs = max(5, args.rounds * 2)
    bare = [wall_time([PYTHON, "-c", "pass"]) for _ in range(runs)]
    first = [float(subprocess.run([PYTHON, "-c", FIRST_QUERY], capture_output=True, text=True, check=True).stdout)
             for _ in range(runs)]
    base = median_ms(bare)
    rows = [("what", "median ms", "x python -c pass")]
    rows.append(("python -c pass (whole process)", f"{base:.1f}", "1.00"))
    rows.append(("one query, model loaded", f"{median_ms(single):.1f}", f"{median_ms(single) / base:.2f}"))
    rows.append(("first query of a process (imports + weights)", f"{median_ms(first):.1f}",
                 f"{median_ms(first) / base:.2f}"))
    print_table(f"single-query embedding, {len(single)} queries / {runs} processes", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
