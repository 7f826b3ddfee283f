"""The training set: exchanges the user rated 4 or 5, as chat JSONL, split into train and valid.

Rules, and why:
- the latest rating counts (the user may have changed their mind), and only complete exchanges
  with a non-empty final answer qualify: a half answer teaches half answers;
- duplicates go: the same prompt (whitespace and case folded) keeps its newest well-rated answer,
  so a question asked ten times does not weigh ten times;
- the split is by a hash of the prompt, not at random, so an example stays on its side from one
  nightly run to the next and the held-out loss compares like with like; the valid prompts are
  the held-out prompts validation scores on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MIN_SCORE = 4
VALID_EVERY = 10  # about one example in ten is held out


@dataclass(frozen=True)
class Example:
    exchange_id: int
    created_at: float
    prompt: str
    answer: str
    system: str | None
    domain: str = "unknown"

    def messages(self) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        return out + [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


@dataclass
class Dataset:
    train: list[Example] = field(default_factory=list)
    valid: list[Example] = field(default_factory=list)
    rated: int = 0  # exchanges rated at all
    duplicates: int = 0

    @property
    def size(self) -> int:
        return len(self.train) + len(self.valid)

    def summary(self) -> dict[str, Any]:
        every = self.train + self.valid
        stamps = [e.created_at for e in every]
        return {
            "examples": self.size, "train": len(self.train), "valid": len(self.valid),
            "rated": self.rated, "duplicates_dropped": self.duplicates,
            "first": _date(min(stamps)) if stamps else None, "last": _date(max(stamps)) if stamps else None,
            "domains": dict(Counter(e.domain for e in every).most_common()),
        }

    def write(self, folder: Path) -> dict[str, Path]:
        """train.jsonl and valid.jsonl (the chat format mlx-lm and TRL read), written atomically."""
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        out = {}
        for name, rows in (("train", self.train), ("valid", self.valid)):
            path = folder / f"{name}.jsonl"
            tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
            with tmp.open("w", encoding="utf-8") as f:
                for example in rows:
                    f.write(json.dumps({"messages": example.messages()}, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
            out[name] = path
        return out


def _date(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d")


def _key(prompt: str) -> str:
    return " ".join(prompt.casefold().split())


def is_valid_side(prompt: str) -> bool:
    return int(hashlib.sha256(_key(prompt).encode()).hexdigest()[:8], 16) % VALID_EVERY == 0


def build_dataset(history: Any, min_score: int = MIN_SCORE, classify: bool = True) -> Dataset:
    """Read every exchange of a HistoryStore once and keep the well-rated ones."""
    data = Dataset()
    newest: dict[str, Example] = {}
    domain_of = _domain_classifier() if classify else None
    for exchange in history.iter_exchanges():
        score = exchange.rating
        if score is None:
            continue
        data.rated += 1
        answer = exchange.final_text.strip()
        if score < min_score or exchange.status != "complete" or not answer or not exchange.prompt.strip():
            continue
        key = _key(exchange.prompt)
        if key in newest:
            data.duplicates += 1  # iter_exchanges goes oldest first: the later one wins
        newest[key] = Example(exchange.id, exchange.created_at, exchange.prompt.strip(), answer, exchange.system,
                              domain_of(exchange.prompt) if domain_of else "unknown")
    for example in sorted(newest.values(), key=lambda e: e.exchange_id):
        (data.valid if is_valid_side(example.prompt) else data.train).append(example)
    # A tiny history may hash nothing to the valid side: validation still needs a held-out prompt.
    if not data.valid and len(data.train) >= 2:
        data.valid.append(data.train.pop())
    return data


def _domain_classifier() -> Any:
    """The router's fast classifier (keywords, no model), or None if the matrix does not load."""
    try:
        from mirador.routing.classify import classify_fast
        from mirador.routing.matrix import load_matrix

        matrix = load_matrix()
    except Exception:  # a broken matrix costs the domain column, never the dataset
        return None
    return lambda prompt: classify_fast(prompt, matrix).domain
