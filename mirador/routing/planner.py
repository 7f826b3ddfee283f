"""The planner: domain → chain of steps → installed models, with every choice explained.

For each step: the matrix's best model, else its alternatives in rank order
(each followed by the alternatives its own entry lists), else any installed
chat model with the strengths the step needs, smallest adequate first. A
model answers at most one step. A step nothing fits is dropped and said so,
except the last: rather than end on a quick acknowledgment, the largest
installed general model synthesises. When no step fits at all, the error
lists what to `ollama pull`.

Outside knowledge comes in through `PlanConstraints` only (a power budget
from the energy module, quality learned from ratings by the memory module),
so those plug in without touching this file. A personalised model
(`<base>-mirador`, deployed by `mirador train`) is never a candidate of
its own while its base is installed: with `personalized` on it answers
wherever its base was chosen, and says so. An energy profile
(`PlanConstraints.energy`) sees every step's ranked candidates: the greedy
choice is its full-power reference, and mirador.energy picks among them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from mirador.errors import MiradorError
from mirador.routing.classify import QueryAnalysis
from mirador.routing.installed import STAGING_SUFFIX, InstalledModel, personal_twins
from mirador.routing.schema import CapabilityMatrix, ModelSpec, StepSpec

# How far a stage is trusted when its model is not the matrix's first choice.
ALTERNATIVE_FACTOR, STRENGTHS_FACTOR, GENERAL_FACTOR = 0.9, 0.75, 0.6
# Share of the matrix's rank order in a candidate's score once ratings exist (the rest: the learned score).
MATRIX_WEIGHT = 0.25
# Context a model needs beyond the query itself: instructions, earlier drafts, the answer.
CONTEXT_HEADROOM_TOKENS = 1024


class PlanConstraints(NamedTuple):
    """What other parts of Mirador know that the matrix does not; all optional."""

    power_budget_w: float | None = None  # energy: skip models that would draw more than this
    model_power_w: Callable[[InstalledModel], float | None] | None = None  # energy: a model's expected draw
    quality: Callable[[str, str], float | None] | None = None  # memory: (domain, model) → learned score 0..1
    excluded: frozenset[str] = frozenset()  # never use these installed names
    reserved: frozenset[str] = frozenset()  # already answering elsewhere (stage 1 of a refined plan)
    energy: Any = None  # energy: the profile's EnergyConstraint (mirador.energy.profiles.energy_constraint)
    personalized: bool = False  # config `personalized`: <base>-mirador answers wherever <base> is chosen


class Choice(NamedTuple):
    step: str
    model: str  # the installed name requests use
    matrix_model: str | None  # the matrix entry it satisfies
    confidence: float
    reason: str
    via: str  # "best" | "alternative" | "strengths" | "general"


class Fallback(NamedTuple):
    step: str
    wanted: str  # what the matrix prefers (a model id, or the strengths needed)
    used: str | None  # what answers instead; None = the step was dropped
    why: str


class Plan(NamedTuple):
    domain: str
    analysis: QueryAnalysis
    choices: list[Choice]
    fallbacks: list[Fallback]
    notes: list[str]
    installed: list[InstalledModel]
    elapsed_ms: float
    energy: Any = None  # mirador.energy's EnergyPlan when an energy profile reshaped the chain


class NoModelFits(MiradorError):
    """Nothing installed can answer this kind of question."""


class _Candidate(NamedTuple):
    model: InstalledModel
    via: str
    ranked_as: str  # the matrix id it was listed as, or "" for strength matches


def plan(analysis: QueryAnalysis, matrix: CapabilityMatrix, installed: Sequence[InstalledModel],
         constraints: PlanConstraints | None = None, *, skip_first_step: bool = False) -> Plan:
    """Choose an installed model for every step of the analysed domain's chain."""
    started = time.perf_counter()
    constraints = constraints or PlanConstraints()
    domain = matrix.domains[analysis.domain]
    steps = [s for s in domain.chain if analysis.steps is None or s.name in analysis.steps]
    if skip_first_step:
        steps = [s for s in steps if s.name != domain.chain[0].name] or steps[-1:]
    notes: list[str] = list(analysis.notes)
    if analysis.step_reason:
        notes.append(analysis.step_reason)
    chat = [m for m in installed if m.kind == "chat" and not m.name.endswith(STAGING_SUFFIX)]
    twins = personal_twins(chat)
    twin_names = {m.name for m in twins.values()}
    chat = [m for m in chat if m.name not in twin_names]
    by_spec: dict[str, list[InstalledModel]] = {}
    for model in chat:
        if model.spec is not None:
            by_spec.setdefault(model.spec.id, []).append(model)
    # A stage answered by a base's twin holds the base too (a refined plan reserves stage 1's model).
    used: set[str] = set(constraints.reserved) | {base for base, m in twins.items() if m.name in constraints.reserved}
    used_by: dict[str, str] = {name: "an earlier stage" for name in constraints.reserved}
    choices: list[Choice] = []
    fallbacks: list[Fallback] = []
    ranked: list[tuple[StepSpec, list[_Candidate]]] = []
    for number, step in enumerate(steps, 1):
        candidates = _rank(_candidates(step, matrix, by_spec, chat), analysis, constraints, notes, step)
        if number == len(steps) and len(choices) <= 1:
            candidates += _general(chat, candidates, choices)
        ranked.append((step, candidates))
        pick = _first_usable(candidates, used, constraints, notes, step)
        best = matrix.models[step.best]
        if pick is None:
            fallbacks.append(Fallback(step.name, step.best, None, _dropped_why(step, best, chat)))
            continue
        used.add(pick.model.name)
        used_by[pick.model.name] = f"the {step.name} step"
        choices.append(_choice(step, pick))
        if pick.via != "best":
            fallbacks.append(Fallback(step.name, step.best, pick.model.name, _fallback_why(best, by_spec, used_by)))
    if not choices:
        _nothing_fits(steps, chat, matrix, analysis)
    energy = None
    if constraints.energy is not None:
        choices, fallbacks, energy = _fit_energy(ranked, choices, fallbacks, notes, chat, constraints)
    if constraints.personalized and twins:
        choices, fallbacks = _personalize(choices, fallbacks, twins, constraints, notes)
    return Plan(analysis.domain, analysis, choices, fallbacks, notes, list(installed),
                (time.perf_counter() - started) * 1000, energy)


def _fit_energy(ranked: list[tuple[StepSpec, list[_Candidate]]], choices: list[Choice], fallbacks: list[Fallback],
                notes: list[str], chat: list[InstalledModel], constraints: PlanConstraints
                ) -> tuple[list[Choice], list[Fallback], Any]:
    """The energy profile's pick among every step's candidates (mirador.energy.planning)."""
    from mirador.energy.planning import changes_nothing, summary  # cheap: the optimizer loads only to fit

    profile = constraints.energy
    if changes_nothing(profile):
        notes.append(summary(profile, None))
        return choices, fallbacks, None
    from mirador.energy.models import ModelFacts
    from mirador.energy.planning import StepCandidates, fit_chain, why_changed

    skip = constraints.excluded | constraints.reserved
    options = [(step, {c.model.name: c for c in cands if c.model.name not in skip}) for step, cands in ranked]
    options = [(step, cands) for step, cands in options if cands]
    full = {c.step: c.model for c in choices}
    facts = [ModelFacts(m.name, m.params_b, m.spec.quantization if m.spec else None, m.size, "matrix") for m in chat]
    fitted = fit_chain([StepCandidates(step.name, [(name, _choice(step, c).confidence) for name, c in cands.items()],
                                       step.max_tokens) for step, cands in options],
                       [full.get(step.name, "") for step, _ in options], profile, facts)
    steps = {step.name: (step, cands) for step, cands in options}
    fitted_choices = [_choice(steps[s.name][0], steps[s.name][1][s.model]) for s in fitted.stages]
    kept = {c.step: c.model for c in fitted_choices}
    fallbacks = [f for f in fallbacks if kept.get(f.step) == full.get(f.step)]
    fallbacks += [Fallback(c.step, c.model, kept.get(c.step), why_changed(profile, c.model, kept.get(c.step)))
                  for c in choices if kept.get(c.step) != c.model]
    notes.extend([*fitted.notes, summary(profile, fitted)])
    return fitted_choices or choices, fallbacks, fitted


def _personalize(choices: list[Choice], fallbacks: list[Fallback], twins: dict[str, InstalledModel],
                 constraints: PlanConstraints, notes: list[str]) -> tuple[list[Choice], list[Fallback]]:
    out = []
    for choice in choices:
        twin = twins.get(choice.model)
        if twin is None or twin.name in constraints.excluded:
            out.append(choice)
            continue
        notes.append(f"{choice.step}: {twin.name} answers in place of {choice.model} "
                     "(personalized: true; your adapter from `mirador train`)")
        out.append(choice._replace(model=twin.name, reason=f"{choice.reason}; personalised: {twin.name}, "
                                                           f"{choice.model} with your adapter"))
    swapped = {c.model: o.model for c, o in zip(choices, out, strict=True) if c.model != o.model}
    return out, [f._replace(used=swapped.get(f.used, f.used)) if f.used else f for f in fallbacks]


def _candidates(step: StepSpec, matrix: CapabilityMatrix, by_spec: dict[str, list[InstalledModel]],
                chat: list[InstalledModel]) -> list[_Candidate]:
    order: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(model_id: str, via: str) -> None:
        if model_id in seen:
            return
        seen.add(model_id)
        order.append((model_id, via))
        for alternative in matrix.models[model_id].alternatives:  # acyclic: checked on load
            add(alternative, "alternative")

    add(step.best, "best")
    for alternative in step.alternatives:
        add(alternative, "alternative")
    out = [_Candidate(model, via, model_id) for model_id, via in order for model in by_spec.get(model_id, ())[:1]]
    listed = {c.model.name for c in out}
    needs = set(step.needs)
    adequate = [m for m in chat if m.name not in listed and needs <= m.strengths]
    adequate.sort(key=lambda m: (m.params_b is None, m.params_b or 0.0, m.name))  # smallest adequate first
    out += [_Candidate(model, "strengths", "") for model in adequate]
    return out


def _rank(candidates: list[_Candidate], analysis: QueryAnalysis, constraints: PlanConstraints,
          notes: list[str], step: StepSpec) -> list[_Candidate]:
    """Preferences beyond the matrix's order: learned quality, language, room in the context."""
    if constraints.quality is not None and candidates:
        n = len(candidates)
        learned = [constraints.quality(analysis.domain, c.model.name) for c in candidates]
        keyed = []
        for i, candidate in enumerate(candidates):
            prior = 1.0 - i / n
            # Once ratings speak about any candidate they outweigh the matrix's order, and an unrated
            # model counts as neutral (0.5): otherwise a badly rated first choice could never fall
            # below the third, whatever the ratings said.
            score = prior if all(x is None for x in learned) else \
                MATRIX_WEIGHT * prior + (1 - MATRIX_WEIGHT) * (0.5 if learned[i] is None else learned[i])
            keyed.append((score, -i, candidate))
        reordered = [c for _, _, c in sorted(keyed, key=lambda k: (k[0], k[1]), reverse=True)]
        if reordered[0] != candidates[0]:
            notes.append(f"{step.name}: your ratings put {reordered[0].model.name} ahead of "
                         f"{candidates[0].model.name}")
        candidates = reordered
    if analysis.language not in ("English", "unknown"):
        candidates = sorted(candidates, key=lambda c: "multilingual" not in c.model.strengths)
    needed = analysis.est_tokens + CONTEXT_HEADROOM_TOKENS
    roomy = [c for c in candidates if c.model.context is None or c.model.context >= needed]
    if len(roomy) != len(candidates):
        cramped = [c for c in candidates if c not in roomy]
        if cramped and candidates and cramped[0] == candidates[0]:
            notes.append(f"{step.name}: the query is about {analysis.est_tokens:,} tokens, more than "
                         f"{cramped[0].model.name}'s {cramped[0].model.context:,}-token context; "
                         "models with room for it come first")
        candidates = roomy + cramped
    return candidates


def _first_usable(candidates: list[_Candidate], used: set[str], constraints: PlanConstraints, notes: list[str],
                  step: StepSpec) -> _Candidate | None:
    for candidate in candidates:
        name = candidate.model.name
        if name in used or name in constraints.excluded:
            continue
        if constraints.power_budget_w is not None and constraints.model_power_w is not None:
            draw = constraints.model_power_w(candidate.model)
            if draw is not None and draw > constraints.power_budget_w:
                notes.append(f"{step.name}: skipped {name}, which draws about {draw:.0f} W, over the "
                             f"{constraints.power_budget_w:.0f} W budget")
                continue
        return candidate
    return None


def _choice(step: StepSpec, pick: _Candidate) -> Choice:
    model = pick.model
    spec_id = model.spec.id if model.spec else None
    if pick.via == "best":
        return Choice(step.name, model.name, spec_id, step.confidence, step.reason, "best")
    if pick.via == "alternative":
        reason = f"the matrix's next choice for {step.name} after {step.best}, which is not available"
        return Choice(step.name, model.name, spec_id, round(step.confidence * ALTERNATIVE_FACTOR, 2), reason,
                      "alternative")
    needs = ", ".join(step.needs) or "no particular strength"
    size = f"{model.params_b:g}B" if model.params_b is not None else "size unknown"
    if pick.via == "general":
        reason = (f"nothing installed has what {step.name} needs ({needs}); the largest installed general "
                  f"model ({size}) answers it")
        return Choice(step.name, model.name, spec_id, round(step.confidence * GENERAL_FACTOR, 2), reason, "general")
    inferred = "; strengths inferred from its name and size" if model.inferred else ""
    reason = f"installed, has what {step.name} needs ({needs}), smallest such model ({size}){inferred}"
    return Choice(step.name, model.name, spec_id, round(step.confidence * STRENGTHS_FACTOR, 2), reason, "strengths")


def _fallback_why(best: ModelSpec, by_spec: dict[str, list[InstalledModel]], used_by: dict[str, str]) -> str:
    if best.id not in by_spec:
        return f"{best.id} is not installed (ollama pull {best.pull_name})"
    name = by_spec[best.id][0].name
    if name in used_by:
        return f"{name} already answers {used_by[name]}; a model answers one step only"
    return f"{name} is installed but set aside here (excluded, over the power budget, or short of context)"


def _dropped_why(step: StepSpec, best: ModelSpec, chat: list[InstalledModel]) -> str:
    needs = ", ".join(step.needs) or "a chat model"
    if not chat:
        return "no chat model is installed"
    return f"no other installed model has {needs} (ollama pull {best.pull_name} for it)"


def _general(chat: list[InstalledModel], listed: list[_Candidate], chosen: list[Choice]) -> list[_Candidate]:
    """For the last step, when only the acknowledgment was chosen: a larger general model synthesises."""
    names = {c.model.name for c in listed}
    floor = max((m.params_b or 0.0 for m in chat if m.name in {c.model for c in chosen}), default=0.0)
    general = [m for m in chat if "general" in m.strengths and m.name not in names and (m.params_b or 0.0) > floor]
    general.sort(key=lambda m: (m.params_b or 0.0), reverse=True)
    return [_Candidate(model, "general", "") for model in general]


def _nothing_fits(steps: list[StepSpec], chat: list[InstalledModel], matrix: CapabilityMatrix,
                  analysis: QueryAnalysis) -> None:
    installed = ", ".join(m.name for m in chat) or "none"
    raise NoModelFits(
        f"no installed model can answer a {analysis.domain.replace('_', ' ')} question "
        f"(installed chat models: {installed})",
        hint=f"install one: {_pull_list(steps, matrix)}   (or choose one yourself: mirador ask -m MODEL)",
    )


def _pull_list(steps: list[StepSpec], matrix: CapabilityMatrix) -> str:
    names: list[str] = []
    for step in steps:
        tag = matrix.models[step.best].pull_name
        if tag not in names:
            names.append(tag)
    return ", ".join(f"ollama pull {name}" for name in names)
