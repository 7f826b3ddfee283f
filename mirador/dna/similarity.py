"""Compatibility of two DNA profiles, and their blend (`mirador dna crossover`).

The similarity of two profiles is a weighted mean of per-field similarities,
each in 0..1:

- scales (verbosity, technical_depth): 1 - |a - b|, the numeric distance on 0..1;
- categories (reasoning_style, response_pace, evidence_preference, tone,
  format.structure, language) and switches (format.code_first, format.examples):
  1 when equal (case-insensitive), else 0;
- lists (preferred_frameworks, domain_expertise): the Jaccard index |A ∩ B| / |A ∪ B|
  of the case-folded names, 1 when both are empty.

WEIGHTS says how much each field counts: how an answer is reasoned and how long
and technical it is shape it most; presentation details least. The score is
sum(weight * similarity) / sum(weight), shown as a percentage.

The blend averages scales, unites lists and keeps your own choice for
categories and switches (they have no middle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mirador.dna.schema import FIELDS, ModelDNA

WEIGHTS: dict[str, float] = {
    "reasoning_style": 2.0,
    "verbosity": 1.5,
    "technical_depth": 1.5,
    "preferred_frameworks": 1.0,
    "domain_expertise": 1.0,
    "response_pace": 1.0,
    "evidence_preference": 1.0,
    "language": 0.5,
    "tone": 0.5,
    "format.structure": 0.5,
    "format.code_first": 0.5,
    "format.examples": 0.25,
}
assert set(WEIGHTS) == set(FIELDS), "every DNA field needs a weight"


@dataclass(frozen=True)
class FieldMatch:
    key: str
    mine: Any
    theirs: Any
    similarity: float
    weight: float
    measure: str  # "distance" | "match" | "jaccard"


@dataclass(frozen=True)
class Compatibility:
    score: float  # 0..1
    fields: list[FieldMatch]

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 4),
                "fields": [{"key": f.key, "mine": f.mine, "theirs": f.theirs, "similarity": round(f.similarity, 4),
                            "weight": f.weight, "measure": f.measure} for f in self.fields]}


def jaccard(a: list[str], b: list[str]) -> float:
    left, right = {x.casefold() for x in a}, {x.casefold() for x in b}
    if not left and not right:
        return 1.0
    return len(left & right) / len(left | right)


def field_similarity(key: str, a: Any, b: Any) -> tuple[float, str]:
    kind = FIELDS[key].kind
    if kind == "scale":
        return 1.0 - abs(float(a) - float(b)), "distance"
    if kind == "list":
        return jaccard(a, b), "jaccard"
    same = str(a).casefold() == str(b).casefold()
    return (1.0 if same else 0.0), "match"


def compare(mine: ModelDNA, theirs: ModelDNA) -> Compatibility:
    matches = []
    for key in FIELDS:
        similarity, measure = field_similarity(key, mine[key], theirs[key])
        matches.append(FieldMatch(key, mine[key], theirs[key], similarity, WEIGHTS[key], measure))
    score = sum(m.weight * m.similarity for m in matches) / sum(m.weight for m in matches)
    return Compatibility(score, matches)


def blend(mine: ModelDNA, theirs: ModelDNA) -> ModelDNA:
    values = dict(mine.values)
    for key, spec in FIELDS.items():
        if spec.kind == "scale":
            values[key] = round((float(mine[key]) + float(theirs[key])) / 2, 3)
        elif spec.kind == "list":
            seen = {x.casefold() for x in mine[key]}
            values[key] = list(mine[key]) + [x for x in theirs[key] if x.casefold() not in seen]
    return ModelDNA(values)
