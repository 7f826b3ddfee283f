"""The fast-track learner: ratings become (domain, model) quality scores the planner uses at once.

In the spirit of Open WebUI's topic-weighted Elo and the Eagle router: a
global score per (domain, model) from every rating, plus a local one from the
rated past queries most similar to this one (weighted by similarity). A rating
of 4–5 is evidence for every model of the chain that answered, 1–2 evidence
against (each stage shaped the text the user read), 3 is neutral. The later
rating of an exchange replaces its earlier one.

The global part lives in a small JSON table (data/memory/ratings.json) written
at `mirador rate` time, so the planner reads it while /api/tags is on its way,
with no ChromaDB and no embedding. The local part needs the query's embedding
and the pattern store: `mirador route` (and anything else already embedding
the query) passes the hits in.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RATINGS_FILE = Path("memory") / "ratings.json"
# Evidence per rating: 3 says nothing either way.
RATING_WEIGHT = {5: 1.0, 4: 0.5, 3: 0.0, 2: -0.5, 1: -1.0}
# A rating counts across its whole domain, and again (times similarity) near its own topic.
GLOBAL_WEIGHT = 1.0
LOCAL_MIN_SIMILARITY = 0.5
WELL_RATED = 4


@dataclass
class Evidence:
    good: float = 0.0
    bad: float = 0.0

    def add(self, delta: float) -> None:
        if delta > 0:
            self.good += delta
        elif delta < 0:
            self.bad -= delta

    def score(self) -> float | None:
        """Laplace-smoothed share of good evidence, 0..1; None without evidence (the matrix decides)."""
        if self.good + self.bad <= 0:
            return None
        return (self.good + 1.0) / (self.good + self.bad + 2.0)


Key = tuple[str, str]  # (domain, model)


def contributions(domain: str, models: list[str], score: int) -> list[tuple[Key, float]]:
    """What one rating says about each (domain, model) pair of the chain that answered."""
    weight = RATING_WEIGHT.get(int(score), 0.0)
    return [((domain, model), weight) for model in dict.fromkeys(models)]


def ratings_path(paths: Any) -> Path:
    return Path(paths.data_dir) / RATINGS_FILE


class RatingTable:
    """The latest rating of every exchange, with the domain and chain it applies to."""

    def __init__(self, path: Path, entries: dict[str, dict[str, Any]] | None = None):
        self.path = path
        self.entries = entries or {}

    @classmethod
    def load(cls, paths: Any) -> RatingTable:
        path = ratings_path(paths)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = data.get("ratings", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            entries = {}  # missing or damaged: no learned scores; `mirador memory rebuild` restores them
        return cls(path, {k: v for k, v in entries.items() if isinstance(v, dict)})

    def record(self, exchange_id: int, domain: str, models: list[str], score: int) -> None:
        self.entries[str(exchange_id)] = {"domain": domain, "models": list(models), "score": int(score),
                                          "at": time.time()}

    def forget(self, exchange_ids: Iterable[int]) -> int:
        return sum(self.entries.pop(str(i), None) is not None for i in exchange_ids)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ratings-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump({"version": 1, "ratings": self.entries}, file, ensure_ascii=False)
            os.replace(tmp, self.path)  # readers see the old table or the new one, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def well_rated(self) -> int:
        return sum(1 for e in self.entries.values() if int(e.get("score", 0)) >= WELL_RATED)

    def evidence(self) -> dict[Key, Evidence]:
        table: dict[Key, Evidence] = {}
        for entry in self.entries.values():
            for key, delta in contributions(str(entry.get("domain", "")), list(entry.get("models", [])),
                                            int(entry.get("score", 3))):
                table.setdefault(key, Evidence()).add(delta * GLOBAL_WEIGHT)
        return table


def local_evidence(hits: Iterable[Any]) -> dict[Key, Evidence]:
    """Evidence from rated past queries similar to this one (memory.patterns.Hit), weighted by similarity."""
    table: dict[Key, Evidence] = {}
    for hit in hits:
        pattern = hit.pattern
        if not 1 <= pattern.rating <= 5 or hit.similarity < LOCAL_MIN_SIMILARITY:
            continue
        for key, delta in contributions(pattern.domain, pattern.models, pattern.rating):
            table.setdefault(key, Evidence()).add(delta * hit.similarity)
    return table


def combine(*tables: dict[Key, Evidence]) -> dict[Key, Evidence]:
    out: dict[Key, Evidence] = {}
    for table in tables:
        for key, ev in table.items():
            total = out.setdefault(key, Evidence())
            total.good += ev.good
            total.bad += ev.bad
    return out


def quality_function(evidence: dict[Key, Evidence]) -> Callable[[str, str], float | None] | None:
    """PlanConstraints.quality: (domain, model) → learned score 0..1, None where nothing was learned."""
    if not evidence:
        return None

    def quality(domain: str, model: str) -> float | None:
        found = evidence.get((domain, model))
        return found.score() if found is not None else None

    return quality


def quality_for_plan(paths: Any, hits: Iterable[Any] = ()) -> Callable[[str, str], float | None] | None:
    """The planner's learned quality: the global table, plus local evidence when hits are given.

    Cheap without hits (one small JSON read): `ask` calls it while /api/tags is on its way.
    """
    return quality_function(combine(RatingTable.load(paths).evidence(), local_evidence(hits)))


def has_well_rated(paths: Any) -> bool:
    """Whether retrieval could find an example worth offering (a stat and, if there, a small read)."""
    if not ratings_path(paths).exists():
        return False
    return RatingTable.load(paths).well_rated() > 0
