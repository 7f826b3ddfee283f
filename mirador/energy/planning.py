"""The planner's door to energy: each step's candidate models in, a model per kept step out.

The routing planner ranks candidates and estimates how far to trust each one
at each step; this module turns that into optimizer slots (purpose by
position, as the chain executor assigns it; every step but the last may be
left out to save energy; a model answers one step at most, the planner's own
rule) and runs the profile's search. The planner's greedy choice is the
full-power reference the balanced budget is a share of.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirador.energy.models import ModelFacts
from mirador.energy.optimizer import EnergyPlan, StageSlot, optimize
from mirador.energy.profiles import EnergyConstraint


@dataclass(frozen=True)
class StepCandidates:
    step: str
    options: list[tuple[str, float]]  # (installed model, estimated quality 0..1), the planner's order
    max_tokens: int | None = None  # the step's own cap, when the matrix sets one


def changes_nothing(constraint: EnergyConstraint) -> bool:
    """Performance leaves the planner's plan as it is: no need even to build the slots."""
    return constraint.objective == "quality" and constraint.max_params_b is None and constraint.max_stages is None


def fit_chain(steps: list[StepCandidates], reference: list[str], constraint: EnergyConstraint,
              facts: list[ModelFacts] | None = None) -> EnergyPlan:
    from mirador.energy.costs import CostModel

    costs = constraint.costs or CostModel()
    costs.add_facts(facts or [])
    last = len(steps) - 1
    slots = [StageSlot(_purpose(i, len(steps)), {model: q for model, q in reversed(s.options)}, s.max_tokens,
                       optional=i < last, name=s.step) for i, s in enumerate(steps)]
    return optimize(slots, constraint, costs, reference, distinct=True)


def _purpose(position: int, count: int) -> str:
    # The chain executor's rule (stream.chain.chain_purposes), which this layer may not import.
    if count == 1:
        return "answer"
    return "quick_ack" if position == 0 else "deep_synthesis" if position == count - 1 else "core_analysis"
