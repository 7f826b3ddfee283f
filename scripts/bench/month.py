"""A synthetic month of usage, and what stays warm under the predictor versus keeping the last model.

Daily rhythms (coding mornings, writing afternoons, chat evenings, lazier
weekends), topics that recur with detours, and a coder model that replaces the
old one mid-month. Every question has a text, so pattern memory's evidence
(what questions like the last one needed) has something to find: a homelab
side project that comes back for a few evenings each week on its own model,
and a release workflow (a coding question about a release is followed by the
announcement, on the writer). `with_vectors` embeds the texts with the local
all-MiniLM-L6-v2, as pattern memory does. Shared by scripts/bench/preload.py and the tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from mirador.predict.predictor import Predictor, Use
from mirador.predict.usage import choose_warm

CODER_OLD, CODER_NEW = "qwen2.5-coder:7b", "qwen3-coder:8b"
WRITER, CHAT, QUICK = "llama3.1:8b", "llama3.2:3b", "phi3:mini"
HOMELAB = "deepseek-r1:8b"
HOMELAB_WEEKDAYS = (1, 2, 3)  # Tuesday to Thursday evenings, every week
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
    if topic in ("code", "release"):
        return CODER_NEW if day >= NEW_MODEL_DAY else CODER_OLD
    return {"writing": WRITER, "announce": WRITER, "chat": CHAT, "quick": QUICK, "homelab": HOMELAB}[topic]


# Question texts per topic: templates and fillers, so that questions of a topic resemble each other.
TEXTS: dict[str, tuple[list[str], list[list[str]]]] = {
    "code": (["How do I {0} this {1} in {2}?", "Why does my {2} {1} fail when I {0} it?",
              "Show me how to {0} a {1} written in {2}"],
             [["refactor", "test", "speed up", "debug", "type-annotate"],
              ["async function", "SQL query builder", "REST endpoint", "unit test suite", "regex parser"],
              ["Python", "Rust", "TypeScript", "Go"]]),
    "release": (["Bump the version and tag the {0} release of the {1} library",
                 "Prepare the changelog entries for the {0} release of {1}"],
                [["1.4", "2.0", "0.9 beta", "3.1"], ["parser", "http client", "config loader"]]),
    "announce": (["Write the announcement post for the {0} release of the {1} library",
                  "Draft a short release note email about {1} {0} for our users"],
                 [["1.4", "2.0", "0.9 beta", "3.1"], ["parser", "http client", "config loader"]]),
    "writing": (["Help me {0} the {1} about {2}", "Can you {0} my {1} on {2}?"],
                [["rewrite", "shorten", "outline", "polish"],
                 ["blog post", "cover letter", "book chapter", "newsletter", "grant proposal"],
                 ["urban gardening", "remote work", "medieval history", "climate policy"]]),
    "chat": (["What should I cook tonight with {0}?", "Recommend a film like {1}", "Tell me a fun fact about {2}"],
             [["leftover rice", "chickpeas", "spinach and eggs"], ["Arrival", "Amelie", "The Matrix"],
              ["octopuses", "the moon", "volcanoes", "honey bees"]]),
    "quick": (["Translate '{0}' into {1}", "Convert {2} miles to kilometres"],
              [["good morning", "thank you very much", "where is the station"], ["French", "German", "Spanish"],
               ["3", "12", "26.2"]]),
    "homelab": (["Why does my {0} container {1} on the {2}?", "How should I configure {0} on my {2} so it stops "
                 "trying to {1}?"],
                [["nginx", "postgres", "home assistant", "pihole", "jellyfin"],
                 ["restart in a loop", "lose its config", "refuse connections", "run out of memory"],
                 ["Raspberry Pi", "NAS", "mini PC"]]),
}


def _text(topic: str, rng: random.Random) -> str:
    templates, fillers = TEXTS[topic]
    return rng.choice(templates).format(*(rng.choice(options) for options in fillers))


def synthetic_month(seed: int = 7, days: int = 30, recurring: bool = False) -> list[Use]:
    """The uses, each with its text in `TEXT_OF` (Use has no text field: history keeps it).
    `recurring` adds the homelab side project and the release workflow (what memory could find)."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 2)  # a Monday, local time
    uses: list[Use] = []

    def ask(at: datetime, topic: str, day: int) -> None:
        use = Use(at.timestamp(), (_model(topic, day),))
        TEXT_OF[use.at] = _text(topic, rng)
        uses.append(use)

    for day in range(days):
        date = start + timedelta(days=day)
        if rng.random() < 0.07:
            continue  # a day off
        for hour, topic in _schedule(date.weekday() >= 5).items():
            for _ in range(rng.choice((2, 3, 4, 4, 5, 6))):
                at = date + timedelta(hours=hour, seconds=rng.uniform(0, 3600))
                roll = rng.random()
                chosen = topic if roll < 0.88 else rng.choice(["code", "writing", "chat", "quick"])
                if recurring and chosen == "code" and rng.random() < 0.15:
                    # a release: the announcement follows a few minutes later, on the writer
                    ask(at, "release", day)
                    ask(at + timedelta(seconds=rng.uniform(120, 600)), "announce", day)
                    continue
                ask(at, chosen, day)
        if recurring and date.weekday() in HOMELAB_WEEKDAYS:
            # the side project: an evening session at no fixed hour, its own model, comes back each week
            at = date + timedelta(hours=rng.uniform(17.5, 22.5))
            for _ in range(rng.choice((3, 4, 5))):
                ask(at, "homelab", day)
                at += timedelta(seconds=rng.uniform(60, 420))
    return sorted(uses, key=lambda u: u.at)


TEXT_OF: dict[float, str] = {}  # a use's time -> its question (times are unique in practice)


def with_vectors(uses: list[Use]) -> list[Use]:
    """The same uses with their texts' embeddings (local all-MiniLM-L6-v2, as pattern memory)."""
    from mirador.memory.embed import get_embedder

    texts = [TEXT_OF[u.at] for u in uses]
    unique = sorted(set(texts))
    vectors = get_embedder("local").embed(unique).vectors
    row = {text: vectors[i] for i, text in enumerate(unique)}
    return [replace(u, vector=row[t]) for u, t in zip(uses, texts, strict=True)]


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
