"""The router's top interpretations of a query, for speculative first stages.

The fast classifier gives a probability per domain. When the best two are
close, the query could mean either, and `ask` may start both first stages at
once (mirador.predict.speculative) and keep the one the refined classifier
picks. Each interpretation is a whole plan: its stage-1 model is what would
be speculated on, its stages 2..n what follows if it wins.

The margin is normalised over the best two only, (p1 - p2) / (p1 + p2): 0 is a
tie, 1 a certainty, whatever the other domains hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from mirador.errors import MiradorError

if TYPE_CHECKING:
    from mirador.routing.classify import QueryAnalysis
    from mirador.routing.installed import InstalledModel
    from mirador.routing.planner import Plan, PlanConstraints
    from mirador.routing.schema import CapabilityMatrix

MAX_INTERPRETATIONS = 3


class Interpretation(NamedTuple):
    domain: str
    probability: float  # the fast classifier's
    margin: float  # normalised margin between the best interpretation and this one (0 for the best)
    plan: Plan

    @property
    def first_model(self) -> str:
        return self.plan.choices[0].model


def margin_between(p1: float, p2: float) -> float:
    total = p1 + p2
    return round((p1 - p2) / total, 4) if total > 0 else 1.0


def top_margin(scores: dict[str, float]) -> float:
    """The normalised margin between the two most probable domains (1.0 with a single domain)."""
    best = sorted(scores.values(), reverse=True)[:2]
    return margin_between(best[0], best[1]) if len(best) == 2 else 1.0


def interpretations(query: str, analysis: QueryAnalysis, matrix: CapabilityMatrix, installed: Sequence[InstalledModel],
                    constraints: PlanConstraints | None, quick: Plan | None = None,
                    limit: int = MAX_INTERPRETATIONS) -> list[Interpretation]:
    """The routed domain's plan first (what `ask` does without speculation), then the next most
    probable domains, each planned as if the classifier had chosen it. A domain nothing installed
    can answer is left out."""
    from mirador.routing.classify import detect_steps
    from mirador.routing.planner import plan

    scores = analysis.scores
    best = max(scores.values(), default=0.0)
    order = [analysis.domain] + [d for d in scores if d != analysis.domain]
    out: list[Interpretation] = []
    for domain in order:
        if len(out) >= limit:
            break
        if domain not in matrix.domains:
            continue
        probability = scores.get(domain, 0.0)
        if domain == analysis.domain and quick is not None:
            routed = quick
        else:
            steps, reason = detect_steps(matrix.domains[domain], query)
            as_domain = analysis._replace(domain=domain, confidence=probability, fell_back=False,
                                          steps=steps, step_reason=reason, notes=())
            try:
                routed = plan(as_domain, matrix, installed, constraints)
            except MiradorError:
                continue
        if routed.choices:
            out.append(Interpretation(domain, probability, margin_between(best, probability), routed))
    return out


def speculation_set(found: list[Interpretation], threshold: float) -> list[Interpretation]:
    """The interpretations worth starting together: the routed one (found[0]) and those within
    `threshold` of the best, each on a stage-1 model of its own (a model serves one request at a
    time: a second would only queue). Fewer than two means: no speculation."""
    if not found:
        return []
    best = max(i.probability for i in found)
    chosen: list[Interpretation] = []
    models: set[str] = set()
    for n, interpretation in enumerate(found):
        close = n == 0 or interpretation.probability >= best or \
            margin_between(best, interpretation.probability) < threshold
        if close and interpretation.first_model not in models:
            chosen.append(interpretation)
            models.add(interpretation.first_model)
    return chosen


def describe(found: list[Interpretation]) -> list[dict[str, Any]]:
    return [{"domain": i.domain, "probability": i.probability, "margin": i.margin, "stage1_model": i.first_model,
             "chain": [c.model for c in i.plan.choices]} for i in found]
