"""The probability that each model is needed by the user's next question.

Evidence, from the user's own history: how often each model answered at this
hour of the day (on this kind of day: weekday or weekend), overall, in
the last few questions (recency), and, where pattern memory holds the
questions' embeddings, what past questions like the last one needed
(mirador.predict.similar: the models that answered them, weighted by their
ratings, and the models the question after them needed). Older usage fades (a half-life of a week),
so a model added mid-month takes over as soon as it is used. The evidence is
combined by a logistic regression fitted on the same history, each question
predicted from the questions before it only, which makes the probabilities
calibrated: of the models given 0.8, about 80% are needed
(`reliability` reports it on a held-out tail of the trace).

The current question's plan, when known, outranks all of this: its models are
certain (`with_plan`). numpy is imported only to fit; nothing here is on the
path to the first token.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mirador.predict.similar import SimilarQuestions

HALF_LIFE_S = 7 * 86400.0
LOOK_AHEAD_S = 900.0
ACTIVITY_SMOOTHING = 0.25  # a quarter of a pseudo-day: a slot used every day of a kind tends to 1
RECENT_FADES_S = 3600.0  # an hour's pause and the last questions say little about the next
RECENT = 5  # questions that count as "recent"
FEATURES = ("this hour, this kind of day", "this hour", "overall", "recent questions", "the last question",
            "similar questions: used", "similar questions: needed next")
SMOOTHING = 1.0  # pseudo-questions spread over the known models, so a first use is not a certainty


@dataclass(frozen=True)
class Use:
    """One question: when it was asked and the models it needed."""

    at: float  # epoch seconds
    models: tuple[str, ...]
    # From pattern memory, when it holds the question: its embedding and the user's latest rating.
    vector: Any = field(default=None, compare=False, repr=False)
    rating: int = 0
    key: int = field(default=0, compare=False)  # the exchange's id in history


@dataclass
class _Counts:
    """Decayed usage counts. Weights grow as exp(t / tau) instead of shrinking the past: every
    feature is a share, so the common factor cancels and one pass suffices."""

    origin: float
    tau: float = HALF_LIFE_S / math.log(2)
    by_slot: dict[tuple[int, int, str], float] = field(default_factory=dict)  # (daykind, hour, model)
    slot_total: dict[tuple[int, int], float] = field(default_factory=dict)
    by_hour: dict[tuple[int, str], float] = field(default_factory=dict)
    hour_total: dict[int, float] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    last_at: float = 0.0
    recent: deque[tuple[str, ...]] = field(default_factory=lambda: deque(maxlen=RECENT))
    # Whether the user asks anything at all in an hour: days active in that hour, of the days active.
    active_slots: dict[tuple[int, int], float] = field(default_factory=dict)
    active_days: dict[int, float] = field(default_factory=dict)
    _seen_hours: set[tuple[str, int]] = field(default_factory=set)
    _seen_days: set[str] = field(default_factory=set)
    similar: SimilarQuestions = field(default_factory=SimilarQuestions)

    def weight(self, at: float) -> float:
        return math.exp(min(600.0, (at - self.origin) / self.tau))

    def add(self, use: Use) -> None:
        w = self.weight(use.at)
        kind, hour = _slot(use.at)
        self.slot_total[kind, hour] = self.slot_total.get((kind, hour), 0.0) + w
        self.hour_total[hour] = self.hour_total.get(hour, 0.0) + w
        self.total += w
        for model in set(use.models):
            self.by_slot[kind, hour, model] = self.by_slot.get((kind, hour, model), 0.0) + w
            self.by_hour[hour, model] = self.by_hour.get((hour, model), 0.0) + w
            self.overall[model] = self.overall.get(model, 0.0) + w
        self.recent.append(tuple(set(use.models)))
        self.last_at = use.at
        self.similar.add(use.vector, use.models, use.at, use.rating)
        date = datetime.fromtimestamp(use.at).date().isoformat()
        if date not in self._seen_days:
            self._seen_days.add(date)
            self.active_days[kind] = self.active_days.get(kind, 0.0) + w
        if (date, hour) not in self._seen_hours:
            self._seen_hours.add((date, hour))
            self.active_slots[kind, hour] = self.active_slots.get((kind, hour), 0.0) + w

    def activity(self, at: float) -> float:
        """The chance of at least one question in the hour of `at`, on a day the user is active."""
        kind, hour = _slot(at)
        days = self.active_days.get(kind, 0.0)
        if not days:
            return 0.0
        return self.active_slots.get((kind, hour), 0.0) / (days + self.weight(at) * ACTIVITY_SMOOTHING)

    def features(self, at: float, model: str, known: int) -> list[float]:
        kind, hour = _slot(at)
        prior = 1.0 / max(1, known)
        scale = self.weight(at)  # counts in units of "one question now"

        def share(hits: float, total: float) -> float:
            return (hits / scale + SMOOTHING * prior) / (total / scale + SMOOTHING)

        # The hour itself and its neighbours, half-weighted: habits drift by a few minutes.
        hours = ((hour - 1) % 24, hour, (hour + 1) % 24)
        weights = (0.5, 1.0, 0.5)
        slot_hits = sum(w * self.by_slot.get((kind, h, model), 0.0) for h, w in zip(hours, weights, strict=True))
        slot_all = sum(w * self.slot_total.get((kind, h), 0.0) for h, w in zip(hours, weights, strict=True))
        hour_hits = sum(w * self.by_hour.get((h, model), 0.0) for h, w in zip(hours, weights, strict=True))
        hour_all = sum(w * self.hour_total.get(h, 0.0) for h, w in zip(hours, weights, strict=True))
        # Recent questions say what the user is doing now, less and less as the pause grows.
        fresh = math.exp(-max(0.0, at - self.last_at) / RECENT_FADES_S) if self.recent else 0.0
        recent = sum(model in used for used in self.recent) / len(self.recent) if self.recent else prior
        recent = fresh * recent + (1 - fresh) * prior
        last = fresh if self.recent and model in self.recent[-1] else 0.0
        used, after = self.similar.shares(at, model, prior)
        return [share(slot_hits, slot_all), share(hour_hits, hour_all), share(self.overall.get(model, 0.0), self.total),
                recent, last, used, after]


def _slot(at: float) -> tuple[int, int]:
    when = datetime.fromtimestamp(at)  # the user's local time: habits follow the wall clock
    return (1 if when.weekday() >= 5 else 0), when.hour


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _inputs(features: list[float]) -> list[float]:
    # Shares enter as log-odds: a logistic model on them can then reproduce a share exactly.
    return [_logit(f) for f in features[:4]] + [features[4]] + [_logit(f) for f in features[5:]]


@dataclass
class Predictor:
    """Fitted on a trace of uses; `probabilities(at)` for the question asked at `at`."""

    counts: _Counts
    models: list[str]
    coef: list[float]  # one per input, then the intercept

    @classmethod
    def fit(cls, uses: Sequence[Use], models: Iterable[str] = (), *, l2: float = 1e-3) -> Predictor:
        uses = sorted(uses, key=lambda u: u.at)
        known: list[str] = list(dict.fromkeys([*models, *(m for u in uses for m in u.models)]))
        counts = _Counts(origin=uses[0].at if uses else 0.0)
        rows: list[list[float]] = []
        labels: list[float] = []
        seen: set[str] = set()
        for use in uses:
            if counts.total > 0:  # the first question has nothing to be predicted from
                for model in seen:  # a model never used yet cannot be told apart: learn from the others
                    rows.append(_inputs(counts.features(use.at, model, len(seen))))
                    labels.append(1.0 if model in use.models else 0.0)
            counts.add(use)
            seen.update(use.models)
        coef = _fit_logistic(rows, labels, l2) if len(set(labels)) == 2 else [0.0, 0.0, 1.0] + [0.0] * 5
        return cls(counts, known, coef)

    def probabilities(self, at: float, models: Iterable[str] | None = None) -> dict[str, float]:
        names = list(models) if models is not None else self.models
        used = [m for m in names if self.counts.overall.get(m)]
        out: dict[str, float] = {}
        for model in names:
            if not self.counts.overall.get(model):
                out[model] = 0.0  # never used: nothing says it will be
                continue
            x = _inputs(self.counts.features(at, model, len(used)))
            z = sum(c * v for c, v in zip(self.coef, x, strict=False)) + self.coef[-1]
            out[model] = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
        return out

    def needed_this_hour(self, at: float, models: Iterable[str] | None = None) -> dict[str, float]:
        """The chance each model answers a question soon after `at` (for warming ahead of any
        question: a model is only worth loading in an hour the user is usually there). A warm-up
        runs a few minutes before the questions, so it also looks a quarter of an hour ahead."""
        names = list(models) if models is not None else self.models
        out = dict.fromkeys(names, 0.0)
        for when in (at, at + LOOK_AHEAD_S):
            active = self.counts.activity(when)
            for model, p in self.probabilities(when, names).items():
                out[model] = max(out[model], p * active)
        return out

    def observe(self, use: Use) -> None:
        """Add a question without refitting (the weights change slowly; the counts at once)."""
        self.counts.add(use)
        for model in use.models:
            if model not in self.models:
                self.models.append(model)


def with_plan(probabilities: dict[str, float], plan: Iterable[str]) -> dict[str, float]:
    """The current question's plan is known: its models are needed for certain."""
    out = dict(probabilities)
    for model in plan:
        out[model] = 1.0
    return out


def _fit_logistic(rows: list[list[float]], labels: list[float], l2: float) -> list[float]:
    import numpy as np

    x = np.hstack([np.asarray(rows, dtype=float), np.ones((len(rows), 1))])
    y = np.asarray(labels, dtype=float)
    w = np.zeros(x.shape[1])
    # Newton's method: a handful of steps converge, with no learning rate to tune.
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -60, 60)))
        grad = x.T @ (p - y) / len(y) + l2 * w
        hess = (x.T * (p * (1 - p))) @ x / len(y) + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return [float(v) for v in w]


# -- calibration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityBin:
    low: float
    high: float
    count: int
    predicted: float  # mean predicted probability
    observed: float  # share actually needed


def reliability(uses: Sequence[Use], held_out: float = 0.25, bins: int = 10) -> tuple[list[ReliabilityBin], float]:
    """Fit on the first part of the trace, predict every question of the rest (each from the ones
    before it, never refitting); returns the reliability table and the expected calibration error."""
    uses = sorted(uses, key=lambda u: u.at)
    split = int(len(uses) * (1 - held_out))
    predictor = Predictor.fit(uses[:split])
    pairs: list[tuple[float, float]] = []
    for use in uses[split:]:
        for model, p in predictor.probabilities(use.at).items():
            pairs.append((p, 1.0 if model in use.models else 0.0))
        predictor.observe(use)
    table: list[ReliabilityBin] = []
    for i in range(bins):
        low, high = i / bins, (i + 1) / bins
        inside = [(p, y) for p, y in pairs if low <= p < high or (i == bins - 1 and p == 1.0)]
        if inside:
            table.append(ReliabilityBin(low, high, len(inside), sum(p for p, _ in inside) / len(inside),
                                        sum(y for _, y in inside) / len(inside)))
    ece = sum(b.count * abs(b.predicted - b.observed) for b in table) / max(1, len(pairs))
    return table, ece
