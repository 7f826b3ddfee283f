"""The pattern-memory evidence of the predictor: what past questions like the last one needed.

For the question after the last one, the last question's nearest past questions
(their embeddings, as pattern memory stores them) say two things: which models
answered them (weighted by how the user rated those answers: a liked answer's
models count more, a disliked one's less) and which models the question that
came next needed (a workflow: after "prepare the release", the announcement).
Both fade as the pause since the last question grows, like the recency evidence.

numpy is imported on first use only: the predictor never runs on `ask`'s path
to the first token (mirador preload --predict, models --predict, the benchmarks).
"""

from __future__ import annotations

import math
from typing import Any

K = 8  # neighbours of the last question
MIN_SIMILARITY = 0.45  # below this a "similar" question is about something else (as memory.retrieve)
FADES_S = 3600.0  # an hour's pause and the last question says little about the next
NEXT_WITHIN_S = 1800.0  # a question that follows within this pause belongs to the same session
# A liked answer's models count more, a disliked one's less; unrated ones count as neutral.
RATING_WEIGHT = {0: 1.0, 1: 0.2, 2: 0.5, 3: 1.0, 4: 1.5, 5: 2.0}
SMOOTHING = 1.0


class SimilarQuestions:
    """Past questions with an embedding; `shares(at, model, prior)` for the question after the last one."""

    def __init__(self) -> None:
        self._matrix: Any = None  # unit rows, grown by doubling
        self._count = 0
        self._models: list[frozenset[str]] = []
        self._weights: list[float] = []
        self._at: list[float] = []
        self._next: list[frozenset[str] | None] = []  # models of the question that followed, within a session
        self._last: int | None = None  # row of the last question (None: it had no embedding)
        self._last_at = 0.0
        self._cache: tuple[dict[str, float], float, dict[str, float], float] | None = None

    def add(self, vector: Any, models: tuple[str, ...], at: float, rating: int = 0) -> None:
        """The next question of the trace (vector None: not in pattern memory)."""
        if self._last is not None and at - self._at[self._last] <= NEXT_WITHIN_S:
            self._next[self._last] = frozenset(models)
        self._cache = None
        self._last_at = at
        if vector is None:
            self._last = None
            return
        import numpy as np

        row = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(row))
        if not norm or not math.isfinite(norm):
            self._last = None
            return
        if self._matrix is None:
            self._matrix = np.zeros((64, row.shape[0]), dtype=np.float32)
        elif row.shape[0] != self._matrix.shape[1]:
            self._last = None  # another embedder's vector: not comparable
            return
        if self._count == self._matrix.shape[0]:
            self._matrix = np.vstack([self._matrix, np.zeros_like(self._matrix)])
        self._matrix[self._count] = row / norm
        self._models.append(frozenset(models))
        self._weights.append(RATING_WEIGHT.get(int(rating), 1.0))
        self._at.append(at)
        self._next.append(None)
        self._last = self._count
        self._count += 1

    def _neighbours(self) -> tuple[dict[str, float], float, dict[str, float], float]:
        """(weight per model used, total weight, weight per model needed next, total weight)."""
        if self._cache is not None:
            return self._cache
        used: dict[str, float] = {}
        after: dict[str, float] = {}
        used_total = after_total = 0.0
        if self._last is not None and self._last > 0:
            import numpy as np

            sims = self._matrix[:self._last] @ self._matrix[self._last]
            top = np.argsort(-sims)[:K]
            for j in top:
                sim = float(sims[j])
                if sim < MIN_SIMILARITY:
                    break
                w = sim * self._weights[j]
                used_total += w
                for model in self._models[j]:
                    used[model] = used.get(model, 0.0) + w
                if self._next[j] is not None:
                    after_total += sim
                    for model in self._next[j]:
                        after[model] = after.get(model, 0.0) + sim
        self._cache = (used, used_total, after, after_total)
        return self._cache

    def shares(self, at: float, model: str, prior: float) -> tuple[float, float]:
        """(share of the neighbours that used `model`, share whose next question needed it), each
        smoothed towards `prior` and faded towards it as the pause since the last question grows."""
        used, used_total, after, after_total = self._neighbours()
        fresh = math.exp(-max(0.0, at - self._last_at) / FADES_S) if self._last is not None else 0.0

        def share(hits: float, total: float) -> float:
            value = (hits + SMOOTHING * prior) / (total + SMOOTHING)
            return fresh * value + (1 - fresh) * prior

        return share(used.get(model, 0.0), used_total), share(after.get(model, 0.0), after_total)
