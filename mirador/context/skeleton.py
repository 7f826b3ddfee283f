"""The semantic skeleton of a conversation: its sentences, each scored for what it is worth now.

Extractive on purpose: every point kept is the user's or the model's own words,
so a planted fact (a port, a name, a deadline) survives verbatim. A point's
score mixes four signals, each scaled to 0..1 over the conversation:

- relevance: cosine of the point to the query and to each of its clauses,
  scaled per clause and the best kept, since a question that needs two facts
  is near each of them only in part;
- lexical: the share of the query's (or a clause's) rarer words, IDF-weighted
  and stemmed, that the point holds: it catches names an embedding blurs;
- centrality: mean cosine to every other point, i.e. what the conversation
  keeps coming back to;
- recency: halves every RECENCY_HALF_LIFE turns.

User sentences weigh more than the model's: the user states facts and
constraints, the model mostly restates or derives them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

WEIGHTS = {"relevance": 0.45, "lexical": 0.25, "centrality": 0.15, "recency": 0.15}
ROLE_WEIGHT = {"user": 1.0, "summary": 0.95, "assistant": 0.75}
RECENCY_HALF_LIFE = 6.0  # turns
MAX_POINT_WORDS = 60  # longer sentences are cut into pieces, so one rambling line cannot hog a budget
MAX_CODE_CHARS = 600
DUPLICATE_COSINE = 0.95
STEM = 5  # letters a word is cut to for lexical matching  # a point this close to one already kept adds nothing

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[A-Z0-9])")
_FENCE = re.compile(r"(```.*?(?:```|$))", re.S)
_WORD = re.compile(r"[a-z0-9][a-z0-9_'-]*")
_CLAUSE = re.compile(r"[?.!;,:]+|\s(?:and|then|also|but|plus)\s", re.I)
STOPWORDS = frozenset(
    "a an the and or but if then else of to in on at by for with from as is are was were be been being "
    "it its this that these those i you he she we they me my your our their what which who whom how why "
    "when where do does did can could should would will shall may might must not no yes so than too very "
    "just about into over under again there here all any both each few more most other some such only own "
    "same s t don now have has had having up down out off also please tell give want need use like get "
    "make let know think".split()
)


@dataclass(frozen=True)
class Point:
    text: str
    role: str  # "user" | "assistant" | "summary"
    turn: int  # index of its message in the conversation


@dataclass(frozen=True)
class ScoredPoint:
    point: Point
    index: int  # position in the conversation, for putting the kept points back in order
    score: float
    relevance: float
    lexical: float
    centrality: float
    recency: float

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.point.role, "turn": self.point.turn, "text": self.point.text,
                "score": round(self.score, 4), "relevance": round(self.relevance, 4),
                "lexical": round(self.lexical, 4), "centrality": round(self.centrality, 4),
                "recency": round(self.recency, 4)}


def split_points(messages: list[dict[str, str]]) -> list[Point]:
    """Sentences of every turn, code blocks whole (cut if huge), long sentences in pieces."""
    points: list[Point] = []
    for turn, message in enumerate(messages):
        role = message.get("role", "user")
        if role not in ROLE_WEIGHT:
            continue  # system messages are not part of what was said
        for block in _FENCE.split(message.get("content") or ""):
            if block.startswith("```"):
                code = block if len(block) <= MAX_CODE_CHARS else block[:MAX_CODE_CHARS] + " …```"
                points.append(Point(code, role, turn))
                continue
            for line in block.splitlines():
                for sentence in _SENTENCE_END.split(line.strip()):
                    words = sentence.split()
                    for start in range(0, len(words), MAX_POINT_WORDS):
                        piece = " ".join(words[start:start + MAX_POINT_WORDS])
                        if piece.strip(" -*#>"):
                            points.append(Point(piece, role, turn))
    return points


def query_clauses(query: str) -> list[str]:
    """The query's parts worth matching on their own (three words or more), at most six."""
    clauses = [c.strip() for c in _CLAUSE.split(query) if len(c.split()) >= 3]
    return clauses[:6] if len(clauses) > 1 else []


def content_words(text: str) -> set[str]:
    """Rarer words, stemmed by truncation (allergy and allergic meet at "aller"): crude, language-free."""
    return {w[:STEM] for w in _WORD.findall(text.lower()) if w not in STOPWORDS and len(w) > 2}


def _scaled(values: Any) -> Any:
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-9:
        return values * 0.0
    return (values - low) / (high - low)


def _lexical(points: list[Point], query: str) -> list[float]:
    words = [content_words(p.text) for p in points]
    wanted = content_words(query)
    if not wanted:
        return [0.0] * len(points)
    n = len(points)
    idf = {w: math.log(1 + n / (1 + sum(w in ws for ws in words))) for w in wanted}
    total = sum(idf.values())
    return [sum(idf[w] for w in wanted & ws) / total for ws in words]


def score_points(points: list[Point], query: str, embedder: Any) -> tuple[list[ScoredPoint], Any]:
    """Score every point for this query with one embedding call; also returns the points' vectors."""
    import numpy as np

    if not points:
        return [], None
    clauses = query_clauses(query)
    vectors = np.asarray(embedder.embed([p.text for p in points] + [query] + clauses).vectors, dtype=np.float32)
    mine, asked = vectors[: len(points)], vectors[len(points):]
    similarity = mine @ asked.T  # [points, 1 + clauses]
    # Each part of the question gets its own best match: a point that answers one clause fully is
    # as relevant as one that touches the whole question.
    relevance = np.max(np.stack([_scaled(similarity[:, c]) for c in range(similarity.shape[1])]), axis=0)
    n = len(points)
    centrality = (mine @ mine.sum(axis=0) - (mine * mine).sum(axis=1)) / max(n - 1, 1)
    last_turn = max(p.turn for p in points)
    recency = np.array([0.5 ** ((last_turn - p.turn) / RECENCY_HALF_LIFE) for p in points])
    lexical = np.max(np.array([_lexical(points, part) for part in [query, *clauses]]), axis=0)
    parts = {"relevance": relevance, "lexical": lexical, "centrality": _scaled(centrality),
             "recency": recency}
    combined = sum(WEIGHTS[name] * values for name, values in parts.items())
    role = np.array([ROLE_WEIGHT[p.role] for p in points])
    scores = combined * role
    scored = [
        ScoredPoint(p, i, float(scores[i]), float(parts["relevance"][i]), float(lexical[i]),
                    float(parts["centrality"][i]), float(recency[i]))
        for i, p in enumerate(points)
    ]
    return scored, mine
