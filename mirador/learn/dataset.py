"""The training set: exchanges the user rated 4 or 5, as chat JSONL, split into train and valid.

Rules, and why:
- the latest rating counts (the user may have changed their mind), and only complete exchanges
  with a non-empty final answer qualify: a half answer teaches half answers;
- duplicates go: the same prompt (whitespace and case folded) keeps its newest well-rated answer,
  so a question asked ten times does not weigh ten times; near-duplicates too (the same question
  in other words: cosine similarity of the local all-MiniLM-L6-v2 embeddings of the prompts at or
  above NEAR_DUPLICATE), the newest kept; without the embedder only the text rule applies, and the
  summary says so;
- the system prompt is the one the answer was given under: the exchange's own (`ask --system`)
  followed by the DNA fragment its answering stage was sent, both as history recorded them
  (StoredExchange.system_prompt, schema 4). Answers from before schema 4 have no recorded fragment:
  for those the current DNA stands in, and the summary counts them (`reconstructed_system_prompts`)
  and, among them, the ones older than the DNA file's last change (their DNA may have differed);
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
NEAR_DUPLICATE = 0.85  # MiniLM cosine of two prompts at or above which they ask the same thing


@dataclass(frozen=True)
class Example:
    exchange_id: int
    created_at: float
    prompt: str
    answer: str
    system: str | None
    domain: str = "unknown"
    reconstructed: bool = False  # the system prompt uses today's DNA: history had none recorded

    def messages(self) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        return out + [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.answer}]


@dataclass
class Dataset:
    train: list[Example] = field(default_factory=list)
    valid: list[Example] = field(default_factory=list)
    rated: int = 0  # exchanges rated at all
    duplicates: int = 0  # the same prompt as a newer example (text rule)
    near_duplicates: int = 0  # the same question in other words as a newer example (embedding rule)
    dedup: str = "text"  # how near-duplicates were found: "embedding:<model>" or "text (<why>)"
    # Where the DNA part of the system prompts came from: history's record, and for the reconstructed
    # examples (if any) the source of the stand-in, e.g. "current DNA (...)".
    dna: str = "recorded with each answer"
    dna_older: int = 0  # reconstructed examples older than the DNA file's last change

    @property
    def reconstructed(self) -> int:
        """Examples whose system prompt was rebuilt with today's DNA (answers older than schema 4)."""
        return sum(1 for e in self.train + self.valid if e.reconstructed)

    @property
    def size(self) -> int:
        return len(self.train) + len(self.valid)

    def summary(self) -> dict[str, Any]:
        every = self.train + self.valid
        stamps = [e.created_at for e in every]
        return {
            "examples": self.size, "train": len(self.train), "valid": len(self.valid),
            "rated": self.rated, "duplicates_dropped": self.duplicates,
            "near_duplicates_dropped": self.near_duplicates, "dedup": self.dedup,
            "dna": self.dna, "reconstructed_system_prompts": self.reconstructed, "dna_changed_since": self.dna_older,
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


def build_dataset(history: Any, min_score: int = MIN_SCORE, classify: bool = True, *,
                  embedder: Any = "local", threshold: float = NEAR_DUPLICATE,
                  dna_system: str | None | bool = True) -> Dataset:
    """Read every exchange of a HistoryStore once and keep the well-rated ones.

    `embedder`: "local" (the default MiniLM), an Embedder, or None for the text rule only.
    `dna_system`: the DNA for answers history recorded none for (before schema 4): True reads the
    user's current DNA, a string is used as the fragment, False/None: none. A recorded one always wins.
    """
    data = Dataset()
    newest: dict[str, Example] = {}
    domain_of = _domain_classifier() if classify else None
    fallback: tuple[str | None, float | None, str] | None = None  # the current DNA, read on first need
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
        system = exchange.system_prompt
        reconstructed = system is None
        if reconstructed:
            if fallback is None:
                fallback = _dna_fragment(dna_system)
            system = "\n\n".join(part for part in (exchange.system, fallback[0]) if part)
        newest[key] = Example(exchange.id, exchange.created_at, exchange.prompt.strip(), answer, system or None,
                              domain_of(exchange.prompt) if domain_of else "unknown", reconstructed)
    kept = sorted(newest.values(), key=lambda e: e.exchange_id)
    kept, data.near_duplicates, data.dedup = drop_near_duplicates(kept, embedder, threshold)
    if fallback is not None and any(e.reconstructed for e in kept):
        fragment, dna_mtime, source = fallback
        data.dna = source
        if fragment and dna_mtime is not None:
            data.dna_older = sum(1 for e in kept if e.reconstructed and e.created_at < dna_mtime)
    for example in kept:
        (data.valid if is_valid_side(example.prompt) else data.train).append(example)
    # A tiny history may hash nothing to the valid side: validation still needs a held-out prompt.
    if not data.valid and len(data.train) >= 2:
        data.valid.append(data.train.pop())
    return data


def drop_near_duplicates(examples: list[Example], embedder: Any = "local",
                         threshold: float = NEAR_DUPLICATE) -> tuple[list[Example], int, str]:
    """(kept in their order, how many dropped, how found). Newest first: a later phrasing wins."""
    if embedder is None or len(examples) < 2:
        return examples, 0, "text" if embedder is None else _embedder_name(embedder)
    try:
        import numpy as np

        if embedder == "local":
            from mirador.memory.embed import LocalEmbedder

            embedder = LocalEmbedder(threads=None)
        newest_first = sorted(examples, key=lambda e: (e.created_at, e.exchange_id), reverse=True)
        vectors = np.asarray(embedder.embed([e.prompt for e in newest_first]).vectors, dtype=np.float32)
    except Exception as exc:  # no weights, no numpy, a broken install: the text rule still stands
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return examples, 0, f"text (the embedder is unavailable: {reason})"
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    kept_rows: list[int] = []
    dropped: set[int] = set()
    for i in range(len(newest_first)):
        if kept_rows and float((vectors[kept_rows] @ vectors[i]).max()) >= threshold:
            dropped.add(newest_first[i].exchange_id)
        else:
            kept_rows.append(i)
    kept = [e for e in examples if e.exchange_id not in dropped]
    return kept, len(dropped), f"embedding:{_embedder_name(embedder)} cosine >= {threshold:g}"


def _embedder_name(embedder: Any) -> str:
    return str(getattr(embedder, "name", embedder))


def _dna_fragment(dna_system: str | None | bool) -> tuple[str | None, float | None, str]:
    """(the DNA part of an answering stage's system prompt, the DNA file's mtime, a description)."""
    if isinstance(dna_system, str):
        return dna_system or None, None, "given"
    if not dna_system:
        return None, None, "none"
    try:
        from mirador.config import paths
        from mirador.dna.apply import fragment
        from mirador.dna.store import load_for_ask, user_file

        p = paths()
        dna = load_for_ask(p)
        if dna is None:
            return None, None, "none (no DNA file: `mirador dna` creates one)"
        return (fragment(dna, "answer") or None, user_file(p).stat().st_mtime,
                "current DNA (for answers from before history recorded it)")
    except Exception as exc:  # a broken DNA file is `mirador dna`'s to report; train without it
        return None, None, f"none (the DNA file does not load: {getattr(exc, 'message', exc)})"


def _domain_classifier() -> Any:
    """The router's fast classifier (keywords, no model), or None if the matrix does not load."""
    try:
        from mirador.routing.classify import classify_fast
        from mirador.routing.matrix import load_matrix

        matrix = load_matrix()
    except Exception:  # a broken matrix costs the domain column, never the dataset
        return None
    return lambda prompt: classify_fast(prompt, matrix).domain
