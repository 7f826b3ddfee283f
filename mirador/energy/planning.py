"""The planner's door to energy: each step's candidate models in, a model per kept step out.

The routing planner ranks candidates and estimates how far to trust each one
at each step; this module turns that into optimizer slots (purpose by
position, as the chain executor assigns it; every step but the last may be
left out to save energy; a model answers one step at most, the planner's own
rule) and runs the profile's search. The planner's greedy choice is the
full-power reference the balanced budget is a share of.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cheap to import: the planner asks changes_nothing/summary before any slot exists
    from mirador.energy.models import ModelFacts
    from mirador.energy.optimizer import EnergyPlan
    from mirador.energy.profiles import EnergyConstraint


@dataclass(frozen=True)
class StepCandidates:
    step: str
    options: list[tuple[str, float]]  # (installed model, estimated quality 0..1), the planner's order
    max_tokens: int | None = None  # the step's own cap, when the matrix sets one


def changes_nothing(constraint: EnergyConstraint) -> bool:
    """Performance leaves the planner's plan as it is: no need even to build the slots."""
    return constraint.changes_nothing


def fit_chain(steps: list[StepCandidates], reference: list[str], constraint: EnergyConstraint,
              facts: list[ModelFacts] | None = None) -> EnergyPlan:
    from mirador.energy.costs import CostModel
    from mirador.energy.optimizer import StageSlot, optimize

    costs = constraint.costs or CostModel()
    costs.add_facts(facts or [])
    last = len(steps) - 1
    slots = [StageSlot(_purpose(i, len(steps)), {model: q for model, q in reversed(s.options)}, s.max_tokens,
                       optional=i < last, name=s.step) for i, s in enumerate(steps)]
    fitted = optimize(slots, constraint, costs, reference, distinct=True)
    # A stage merged from several steps (survival's one answer) is credited to the last step that offered
    # its model: the planner explains a choice by the step it came from.
    offered = {step.step: {model for model, _ in step.options} for step in steps}
    stages = tuple(stage if stage.model in offered.get(stage.name, ()) else dataclasses.replace(
        stage, name=next(s.step for s in reversed(steps) if stage.model in offered[s.step]))
        for stage in fitted.stages)
    return dataclasses.replace(fitted, stages=stages)


def _purpose(position: int, count: int) -> str:
    # The chain executor's rule (stream.chain.chain_purposes), which this layer may not import.
    if count == 1:
        return "answer"
    return "quick_ack" if position == 0 else "deep_synthesis" if position == count - 1 else "core_analysis"


def why_changed(constraint: EnergyConstraint, full_model: str, new_model: str | None) -> str:
    """Why the profile moved a step off the planner's full-power pick, in the planner's words."""
    if new_model is None:
        return f"left out by the {constraint.profile} profile to save energy"
    costs = constraint.costs
    size = costs.facts_for(full_model).params_b if costs is not None else None
    if constraint.max_params_b is not None and (size is None or size > constraint.max_params_b):
        over = f"{size:g}B, " if size else ""
        return f"{full_model} ({over}over the {constraint.profile} profile's {constraint.max_params_b:g}B limit)"
    return f"{new_model} gives more quality per joule under the {constraint.profile} profile"


def summary(constraint: EnergyConstraint, fitted: EnergyPlan | None) -> str:
    """The one line `mirador route --explain` and `ask` show about energy."""
    head = f"energy: {constraint.profile} profile ({constraint.reason})"
    if fitted is None:
        return f"{head}: the full chain"
    stages = len(fitted.stages)
    return (f"{head}: {stages} stage{'s' if stages != 1 else ''}, about {fitted.joules:.0f} J instead of "
            f"{fitted.full_power_joules:.0f} J for the full chain; {constraint.describe()}")
