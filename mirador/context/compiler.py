"""The context compiler: history, DNA, facts and constraints, distilled into a token budget.

Steps (DESIGN.md): extract the semantic skeleton of the history (skeleton.py),
score each point's relevance to the current query, merge with the DNA
fragment, standing constraints and remembered facts, and compress to the
budget, counted with a real tokenizer where the model's is known.

The DNA fragment and the constraints are always sent whole; the budget must
hold them (else a clear error, never a silently empty context). Facts and
examples from memory take up to a share of what is left; the history's best
points fill the rest and are put back in conversation order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mirador.context.skeleton import DUPLICATE_COSINE, Point, ScoredPoint, score_points, split_points
from mirador.context.tokens import TokenCounter
from mirador.errors import UsageError

DEFAULT_BUDGET = 2048
FACTS_SHARE = 0.25  # of the budget left after DNA and constraints
EXAMPLES_SHARE = 0.15
HISTORY_HEADER = "Earlier in this conversation (the points that matter now, oldest first):"
FACTS_HEADER = "What you know about the user (from earlier conversations):"
EXAMPLES_HEADER = "Answers the user rated well before:"
CONSTRAINTS_HEADER = "The user's standing constraints (always respect them):"
SEPARATOR = "\n\n"


@dataclass
class ContextInputs:
    query: str
    history: list[dict[str, str]] = field(default_factory=list)  # chat messages, oldest first
    dna_fragment: str = ""
    constraints: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)  # from pattern memory, when available
    examples: list[str] = field(default_factory=list)


@dataclass
class ContextPart:
    name: str  # "dna" | "constraints" | "facts" | "examples" | "history"
    text: str
    tokens: int
    items: list[dict[str, Any]] = field(default_factory=list)  # what was kept, with its scores


@dataclass
class CompiledContext:
    parts: list[ContextPart]
    budget: int
    tokens: int  # of everything, the DNA fragment included, counted as sent
    counter: str
    embedder: str
    history_tokens: int  # of the raw history, for comparison
    history_points: int  # points in the history's skeleton
    compile_ms: float = 0.0

    def text(self, include_dna: bool = False) -> str:
        """What stages 2..n receive; the chain adds the DNA fragment per stage itself."""
        return SEPARATOR.join(p.text for p in self.parts if p.text and (include_dna or p.name != "dna"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget, "tokens": self.tokens, "counter": self.counter, "embedder": self.embedder,
            "history_tokens": self.history_tokens, "history_points": self.history_points,
            "compile_ms": round(self.compile_ms, 1),
            "parts": [{"name": p.name, "tokens": p.tokens, "text": p.text, "items": p.items} for p in self.parts],
        }


def _bulleted(header: str, items: list[str]) -> str:
    return header + "\n" + "\n".join(f"- {item.strip()}" for item in items) if items else ""


def _line(point: Point) -> str:
    return f"{point.role}: {point.text}"


def _pack(scored: list[ScoredPoint], vectors: Any, allowance: int, header: str,
          counter: TokenCounter) -> tuple[list[ScoredPoint], str]:
    """Best points first, while they fit; near-duplicates of kept points are skipped."""
    import numpy as np

    room = allowance - counter.count(header) - 1
    kept: list[ScoredPoint] = []
    for candidate in sorted(scored, key=lambda s: s.score, reverse=True):
        cost = counter.count(_line(candidate.point)) + 1
        if cost > room:
            continue
        if kept and vectors is not None:
            nearest = float(np.max(vectors[[k.index for k in kept]] @ vectors[candidate.index]))
            if nearest >= DUPLICATE_COSINE:
                continue
        kept.append(candidate)
        room -= cost
    while kept:
        text = header + "\n" + "\n".join(_line(k.point) for k in sorted(kept, key=lambda s: s.index))
        if counter.count(text) <= allowance:
            return kept, text
        kept.remove(min(kept, key=lambda s: s.score))  # a tokenizer merged across lines: trim the weakest
    return [], ""


def _rank_texts(texts: list[str], query: str, embedder: Any) -> list[str]:
    if len(texts) < 2:
        return list(texts)
    scored, _ = score_points([Point(t, "summary", 0) for t in texts], query, embedder)
    return [s.point.text for s in sorted(scored, key=lambda s: s.relevance + s.lexical, reverse=True)]


def _fit_list(header: str, items: list[str], allowance: int, counter: TokenCounter) -> tuple[str, list[str]]:
    kept: list[str] = []
    for item in items:
        if counter.count(_bulleted(header, kept + [item])) <= allowance:
            kept.append(item)
    return _bulleted(header, kept), kept


def compile_context(inputs: ContextInputs, *, budget: int, counter: TokenCounter, embedder: Any,
                    summariser: Callable[[list[dict[str, str]]], list[str]] | None = None) -> CompiledContext:
    started = time.perf_counter()
    if budget <= 0:
        raise UsageError(f"a context budget must be a positive number of tokens, not {budget}")
    parts: list[ContextPart] = []
    dna_tokens = counter.count(inputs.dna_fragment)
    constraints = _bulleted(CONSTRAINTS_HEADER, inputs.constraints)
    fixed = dna_tokens + counter.count(constraints)
    if fixed > budget:
        what = "the DNA fragment" + (" and the standing constraints" if constraints else "")
        raise UsageError(
            f"the context budget of {budget} tokens is smaller than {what} ({fixed} tokens)",
            hint=f"give a budget of at least {fixed + 64} (--budget, or `mirador config set context_budget N`),"
                 " or make the DNA shorter (fewer frameworks and fields of expertise)",
        )
    if inputs.dna_fragment:
        parts.append(ContextPart("dna", inputs.dna_fragment, dna_tokens))
    if constraints:
        parts.append(ContextPart("constraints", constraints, counter.count(constraints),
                                 [{"text": c} for c in inputs.constraints]))
    left = budget - fixed - 2 * len(SEPARATOR)  # room for the separators between parts
    for name, header, items, share in (("facts", FACTS_HEADER, inputs.facts, FACTS_SHARE),
                                       ("examples", EXAMPLES_HEADER, inputs.examples, EXAMPLES_SHARE)):
        if items and left > 0:
            text, kept = _fit_list(header, _rank_texts(items, inputs.query, embedder), int(left * share), counter)
            if kept:
                tokens = counter.count(text)
                parts.append(ContextPart(name, text, tokens, [{"text": k} for k in kept]))
                left -= tokens + len(SEPARATOR)
    history_tokens = counter.count("\n".join(m.get("content", "") for m in inputs.history))
    points = _history_points(inputs.history, summariser)
    if points and left > 0:
        scored, vectors = score_points(points, inputs.query, embedder)
        kept, text = _pack(scored, vectors, left, HISTORY_HEADER, counter)
        if kept:
            parts.append(ContextPart("history", text, counter.count(text),
                                     [k.to_dict() for k in sorted(kept, key=lambda s: s.index)]))
    total = counter.count(SEPARATOR.join(p.text for p in parts))
    while total > budget and parts and parts[-1].name == "history":
        # Parts counted alone can merge into fewer or more tokens joined: shrink the history to fit.
        last = parts.pop()
        kept, text = _pack(scored, vectors, last.tokens - (total - budget) - 2, HISTORY_HEADER, counter)
        if kept:
            parts.append(ContextPart("history", text, counter.count(text),
                                     [k.to_dict() for k in sorted(kept, key=lambda s: s.index)]))
        total = counter.count(SEPARATOR.join(p.text for p in parts))
    return CompiledContext(parts, budget, total, counter.name, getattr(embedder, "name", type(embedder).__name__),
                           history_tokens, len(points), (time.perf_counter() - started) * 1000)


def _history_points(history: list[dict[str, str]],
                    summariser: Callable[[list[dict[str, str]]], list[str]] | None) -> list[Point]:
    """The extractive skeleton; with a summariser, its lines stand for all but the last exchange."""
    if summariser is None or len(history) <= 2:
        return split_points(history)
    older, recent = history[:-2], history[-2:]
    lines = [line for line in summariser(older) if line.strip()]
    summary = [Point(line.strip().lstrip("-* ").strip(), "summary", len(older) - 1) for line in lines]
    return summary + [Point(p.text, p.role, p.turn + len(older)) for p in split_points(recent)]
