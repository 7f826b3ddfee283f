"""A synthetic month of usage, and what stays warm under the predictor versus keeping the last model.

Daily rhythms (coding mornings, writing afternoons, chat evenings, lazier
weekends), topics that recur with detours, and a coder model that replaces the
old one mid-month. Shared by scripts/bench/preload.py and the tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from mirador.predict.predictor import Predictor, Use
from mirador.predict.usage import choose_warm

CODER_OLD, CODER_NEW = "qwen2.5-coder:7b", "qwen3-coder:8b"
WRITER, CHAT, QUICK = "llama3.1:8b", "llama3.2:3b", "phi3:mini"
NEW_MODEL_DAY = 15
KEEP_ALIVE_S = 600  # Mirador's default keep_alive after a question
PRELOAD_KEEP_S = 3600  # what a predicted preload asks for: until the next hourly prediction
MAX_LOADED = 3
TRAIN_DAYS = 7
SESSION_GAP_S = 1800  # a pause this long ends a session: the next question comes from a new shell


def _schedule(weekend: bool) -> dict[int, str]:
    """hour -> the topic that dominates it."""
    if weekend:
        return {**dict.fromkeys(range(10, 13), "chat"), **dict.fromkeys(range(15, 18), "writing")}
    return {**dict.fromkeys(range(9, 12), "code"), **dict.fromkeys(range(13, 17), "writing"),
            **dict.fromkeys(range(20, 23), "chat")}


def _model(topic: str, day: int) -> str:
    if topic == "code":
        return CODER_NEW if day >= NEW_MODEL_DAY else CODER_OLD
    return {"writing": WRITER, "chat": CHAT, "quick": QUICK}[topic]


def synthetic_month(seed: int = 7, days: int = 30) -> list[Use]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 2)  # a Monday, local time
    uses: list[Use] = []
    for day in range(days):
        date = start + timedelta(days=day)
        if rng.random() < 0.07:
            continue  # a day off
        for hour, topic in _schedule(date.weekday() >= 5).items():
            for _ in range(rng.choice((2, 3, 4, 4, 5, 6))):
                at = date + timedelta(hours=hour, seconds=rng.uniform(0, 3600))
                roll = rng.random()
                chosen = topic if roll < 0.88 else rng.choice(["code", "writing", "chat", "quick"])
                uses.append(Use(at.timestamp(), (_model(chosen, day),)))
    return sorted(uses, key=lambda u: u.at)


@dataclass
class Outcome:
    questions: int
    hits: int
    preloads: int
    wasted: int

    @property
    def hit_rate(self) -> float:
        return self.hits / max(1, self.questions)

    @property
    def waste(self) -> float:
        return self.wasted / max(1, self.preloads)


class _Server:
    """Loaded models with their expiry, at most MAX_LOADED, least recently used evicted."""

    def __init__(self) -> None:
        self.expires: dict[str, float] = {}
        self.used_at: dict[str, float] = {}
        self.preloaded_unused: set[str] = set()
        self.preloads = self.wasted = 0

    def expire(self, now: float) -> None:
        for model in [m for m, t in self.expires.items() if t <= now]:
            self._drop(model)

    def _drop(self, model: str) -> None:
        del self.expires[model]
        if model in self.preloaded_unused:
            self.preloaded_unused.discard(model)
            self.wasted += 1

    def load(self, model: str, now: float, keep: float, preload: bool = False) -> None:
        self.expire(now)
        if model not in self.expires:
            while len(self.expires) >= MAX_LOADED:
                self._drop(min(self.expires, key=lambda m: self.used_at.get(m, 0.0)))
            if preload:
                self.preloads += 1
                self.preloaded_unused.add(model)
        self.expires[model] = max(self.expires.get(model, 0.0), now + keep)
        self.used_at[model] = now

    def use(self, model: str, now: float, keep: float) -> bool:
        self.expire(now)
        hit = model in self.expires
        self.preloaded_unused.discard(model)
        self.load(model, now, keep)
        return hit


def simulate_predictor(uses: list[Use], threshold: float = 0.7, trigger: str = "shell") -> Outcome:
    """trigger "shell": `mirador shell-hook` runs `preload --predict` when a terminal opens, a few
    minutes before the first question of a session; "cron": it runs at the top of every hour."""
    start = uses[0].at
    split = next(i for i, u in enumerate(uses) if u.at - start >= TRAIN_DAYS * 86400)
    predictor = Predictor.fit(uses[:split])
    server = _Server()
    hits = 0
    fitted_day = int((uses[split].at - start) // 86400)
    hour_mark = (uses[split].at // 3600) * 3600
    shell_rng = random.Random(11)

    def warm(now: float, hourly: bool) -> None:
        probabilities = predictor.needed_this_hour(now) if hourly else predictor.probabilities(now)
        for model in choose_warm(probabilities, threshold, MAX_LOADED):
            server.load(model, now, PRELOAD_KEEP_S, preload=True)

    for i in range(split, len(uses)):
        use = uses[i]
        while trigger == "cron" and hour_mark + 3600 <= use.at:
            hour_mark += 3600
            warm(hour_mark, True)
        if trigger == "shell" and use.at - uses[i - 1].at > SESSION_GAP_S:
            warm(use.at - shell_rng.uniform(60, 600), True)  # the terminal opened a few minutes ago
        day = int((use.at - start) // 86400)
        if day != fitted_day:  # refit once a day
            predictor, fitted_day = Predictor.fit(uses[:i]), day
        hits += all(server.use(m, use.at, KEEP_ALIVE_S) for m in use.models)
        predictor.observe(use)
        warm(use.at, False)  # after each answer: what the next question at this hour is likely to need
    server.expire(float("inf"))
    return Outcome(len(uses) - split, hits, server.preloads, server.wasted)


def simulate_keep_last(uses: list[Use]) -> Outcome:
    start = uses[0].at
    split = next(i for i, u in enumerate(uses) if u.at - start >= TRAIN_DAYS * 86400)
    last: tuple[str, ...] = uses[split - 1].models if split else ()
    hits = 0
    for use in uses[split:]:
        hits += all(m in last for m in use.models)
        last = use.models
    return Outcome(len(uses) - split, hits, 0, 0)
