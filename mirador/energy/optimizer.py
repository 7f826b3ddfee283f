"""Choose a model for every stage: the best estimated quality per estimated joule within a budget.

A plan's quality is its final stage's, raised a little by every draft before it:
1 − (1 − q_final) × Π(1 − DRAFT_HELP × q_draft), so a stage never lowers the
estimate and a weak acknowledgment adds little. Its energy is the sum over
stages of tokens × J/token, where a stage's prompt holds the query and every
earlier draft. The search is exact:
depth-first over stages, candidates cheapest first, cut by three bounds (the
energy budget, the quality floor, and the best ratio any completion could still
reach), so 10 models × 3 stages settles in well under a millisecond. Along a
chain, models never get cheaper per token: the chain runs fastest first, and a
final synthesis by a smaller model than its draft is a false saving.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mirador.energy.costs import CostModel
from mirador.energy.models import prior_quality
from mirador.energy.profiles import EnergyConstraint

# The share of the final model's misses a draft catches, in proportion to the draft's own quality: the
# final stage reads the drafts and fixes their mistakes, but a draft cannot do the final model's work.
DRAFT_HELP = 0.15
PURPOSE_TOKENS = {"quick_ack": 96, "core_analysis": 400, "deep_synthesis": 450, "answer": 450}


@dataclass(frozen=True)
class StageSlot:
    """One stage the planner wants filled, and the models it would accept there."""

    purpose: str
    candidates: dict[str, float]  # model -> estimated quality (0..1) of that model at this stage
    tokens: int | None = None  # expected answer tokens; None: the purpose's usual length
    prompt_tokens: int = 0  # the query and context this stage reads, before any earlier draft
    optional: bool = False  # may be left out when saving energy (drafts and acknowledgments)
    name: str = ""  # the planner's name for the step ("extraction", "synthesis"), carried to the result

    def expected_tokens(self) -> int:
        return self.tokens if self.tokens is not None else PURPOSE_TOKENS.get(self.purpose, 400)

    def replace(self, **changes: object) -> StageSlot:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ChosenStage:
    purpose: str
    model: str
    quality: float
    tokens: int
    joules: float
    name: str = ""


@dataclass(frozen=True)
class EnergyPlan:
    profile: str
    stages: tuple[ChosenStage, ...]
    quality: float
    joules: float
    full_power_joules: float  # the best-quality plan's energy: what the budget is a share of
    full_power_quality: float
    budget_joules: float | None = None
    notes: tuple[str, ...] = ()
    evaluated: int = 0  # complete plans scored: what pruning left of the product of candidates
    max_tokens: int | None = None  # the profile's cap on every stage's answer (survival: short answers)
    models: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(stage.model for stage in self.stages))

    @property
    def quality_per_joule(self) -> float:
        return self.quality / self.joules if self.joules > 0 else float("inf")


def slots_for_chain(models: list[str], purposes: list[str], costs: CostModel,
                    quality: dict[str, float] | None = None) -> list[StageSlot]:
    """Slots for a fixed chain when no capability matrix says more: every model of the chain is a
    candidate at every stage, quality guessed from size, every stage but the last optional."""
    quality = quality or {m: prior_quality(costs.facts_for(m).params_b) for m in models}
    last = len(purposes) - 1
    return [StageSlot(purpose, dict(quality), optional=i < last) for i, purpose in enumerate(purposes)]


def optimize(slots: list[StageSlot], constraint: EnergyConstraint, costs: CostModel | None = None,
             reference: list[str] | None = None, *, distinct: bool = False) -> EnergyPlan:
    """The plan for `constraint`. `reference` is the planner's own full-power pick per slot (the
    budget is a share of its energy); by default, the best-quality model of every slot.
    `distinct`: a model answers one stage at most (the planner's rule)."""
    costs = costs or constraint.costs or CostModel()
    notes: list[str] = []
    if not slots:
        return EnergyPlan(constraint.profile, (), 0.0, 0.0, 0.0, 0.0, None, (), 0, constraint.max_tokens_per_stage)
    # The full-power plan, as the planner shaped it: the reference the budget and floor are shares of.
    full_table = _score_table(slots, costs)
    full = _best_quality(full_table) if reference is None else _reference(full_table, reference)
    full_q, full_e = _totals(full_table, full)
    if constraint.objective == "quality" and constraint.max_params_b is None and constraint.max_stages is None:
        return _plan(constraint, slots, full_table, full, full_q, full_e, None, notes, 1)
    slots = _eligible(_shape(slots, constraint), constraint, costs, notes)
    if not slots:
        return EnergyPlan(constraint.profile, (), 0.0, 0.0, full_e, full_q, None, tuple(notes), 0,
                          constraint.max_tokens_per_stage)
    if constraint.objective == "quality":
        table = _score_table(slots, costs)
        return _plan(constraint, slots, table, _best_quality(table), full_q, full_e, None, notes, 1)
    budget = full_e * constraint.energy_budget_fraction if constraint.energy_budget_fraction else None
    floor = full_q * constraint.min_quality_fraction if constraint.min_quality_fraction else None
    found, evaluated = _search_shapes(slots, costs, budget, floor, ratio=True, distinct=distinct)
    if found is None and floor is not None:
        notes.append(f"no plan keeps {constraint.min_quality_fraction:.0%} of the full-power quality within"
                     f" {budget:.0f} J; taking the best quality that fits")
        found, more = _search_shapes(slots, costs, budget, None, ratio=False, distinct=distinct)
        evaluated += more
    if found is None:  # nothing fits the budget at all: the cheapest plan there is
        notes.append("no plan fits the energy budget; taking the cheapest")
        kept = [slots[-1].replace(purpose="answer")] if len(slots) > 1 else [slots[-1]]
        kept_table = _score_table(kept, costs)
        found = (kept, kept_table, [0])
    kept, kept_table, picks = found
    return _plan(constraint, kept, kept_table, picks, full_q, full_e, budget, notes, evaluated)


# -- preparing the slots ---------------------------------------------------------------------------


def _shape(slots: list[StageSlot], constraint: EnergyConstraint) -> list[StageSlot]:
    """Fewer stages and shorter answers where the profile says so. One stage left means one plain
    answer, which any model of the chain may give (survival must find its micro model somewhere)."""
    limit = constraint.max_stages
    if limit is not None and len(slots) > limit:
        if limit == 1:
            merged: dict[str, float] = {}
            for slot in slots:  # later stages' figures win: they describe answering in full
                merged.update(slot.candidates)
            last = slots[-1]
            slots = [StageSlot("answer", merged, last.tokens, last.prompt_tokens, name=last.name)]
        else:
            slots = slots[len(slots) - limit:]
    cap = constraint.max_tokens_per_stage
    if cap is not None:
        slots = [s.replace(tokens=min(s.expected_tokens(), cap)) for s in slots]
    return slots


def _eligible(slots: list[StageSlot], constraint: EnergyConstraint, costs: CostModel,
              notes: list[str]) -> list[StageSlot]:
    """Drop what the profile forbids; when nothing is left, the smallest model there is, said aloud."""
    kept = [s.replace(candidates={m: q for m, q in s.candidates.items() if constraint.allows(costs.facts_for(m))})
            for s in slots]
    if any(s.candidates for s in kept):
        dropped = [s.purpose for s in kept if not s.candidates]
        if dropped:
            notes.append(f"no eligible model for {', '.join(dropped)}: stage skipped")
        return [s for s in kept if s.candidates]
    everything = {m: q for s in slots for m, q in s.candidates.items()}
    if not everything:
        return []
    smallest = min(everything, key=lambda m: (costs.facts_for(m).params_b or float("inf"), m))
    size = costs.facts_for(smallest).params_b
    rule = f" (models of at most {constraint.max_params_b:g}B parameters)" if constraint.max_params_b else ""
    notes.append(f"no installed model fits the {constraint.profile} profile{rule}; "
                 f"falling back to the smallest installed model, {smallest}" + (f" ({size:g}B)" if size else ""))
    last = slots[-1]
    purpose = "answer" if len(slots) == 1 else last.purpose
    return [last.replace(purpose=purpose, candidates={smallest: everything[smallest]}, optional=False)]


# table[i] = [(model, quality, joules, joules per token)] for slot i, cheapest first.
Table = list[list[tuple[str, float, float, float]]]


def plan_quality(qualities: list[float]) -> float:
    """The estimated quality of a chain's answer from its stages' qualities, in chain order."""
    if not qualities:
        return 0.0
    miss = 1.0 - qualities[-1]
    for draft in qualities[:-1]:
        miss *= 1.0 - DRAFT_HELP * draft
    return 1.0 - miss


def _score_table(slots: list[StageSlot], costs: CostModel) -> Table:
    table: Table = []
    earlier_tokens = 0
    for slot in slots:
        tokens = slot.expected_tokens()
        prompt = slot.prompt_tokens + earlier_tokens  # each stage reads the drafts before it
        options = [(model, quality, costs.joules(model, tokens, prompt), costs.cost(model).joules_per_token)
                   for model, quality in slot.candidates.items()]
        table.append(sorted(options, key=lambda o: (o[2], -o[1], o[0])))
        earlier_tokens += tokens
    return table


def _best_quality(table: Table) -> list[int]:
    # Ties in quality go to the cheaper model (options are sorted cheapest first).
    return [max(range(len(options)), key=lambda i, o=options: (o[i][1], -i)) for options in table]


def _reference(table: Table, reference: list[str]) -> list[int]:
    picks = _best_quality(table)
    for i, options in enumerate(table):
        wanted = reference[i] if i < len(reference) else None
        for j, option in enumerate(options):
            if option[0] == wanted:
                picks[i] = j
    return picks


def _totals(table: Table, picks: list[int]) -> tuple[float, float]:
    return (plan_quality([table[i][j][1] for i, j in enumerate(picks)]),
            sum(table[i][j][2] for i, j in enumerate(picks)))


def _search_shapes(slots: list[StageSlot], costs: CostModel, budget: float | None, floor: float | None, *,
                   ratio: bool, distinct: bool) -> tuple[tuple[list[StageSlot], Table, list[int]] | None, int]:
    """The best plan over every way of leaving optional stages out (a chain has few: 2^k shapes)."""
    optional = [i for i, s in enumerate(slots) if s.optional]
    best: tuple[list[StageSlot], Table, list[int]] | None = None
    best_score = float("-inf")
    evaluated = 0
    for mask in range(1 << len(optional)):
        left_out = {optional[b] for b in range(len(optional)) if mask >> b & 1}
        kept = [s for i, s in enumerate(slots) if i not in left_out]
        if not kept:
            continue
        if len(kept) == 1 and len(slots) > 1:
            kept = [kept[0].replace(purpose="answer")]  # alone, a draft stage is simply the answer
        table = _score_table(kept, costs)
        picks, score, count = _search(table, budget, floor, ratio=ratio, distinct=distinct, beat=best_score)
        evaluated += count
        if picks is not None and score > best_score:
            best, best_score = (kept, table, picks), score
    return best, evaluated


def _search(table: Table, budget: float | None, floor: float | None, *, ratio: bool, distinct: bool,
            beat: float) -> tuple[list[int] | None, float, int]:
    """Branch and bound: the best plan by quality/joule (ratio) or by quality, within budget and floor,
    that scores above `beat`."""
    n = len(table)
    # What the slots after i can do at best: the least miss left (quality is monotone in every
    # stage's quality, so the best options bound it), and the least energy.
    best_q = [max(o[1] for o in options) for options in table]
    min_miss_after = [1.0] * (n + 1)
    min_e_after = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        factor = 1.0 - best_q[i] if i == n - 1 else 1.0 - DRAFT_HELP * best_q[i]
        min_miss_after[i] = min_miss_after[i + 1] * factor
        min_e_after[i] = min_e_after[i + 1] + table[i][0][2]
    best: list[int] | None = None
    best_score = beat
    picks = [0] * n
    taken: set[str] = set()
    evaluated = 0
    eps = 1e-9

    def visit(i: int, miss: float, e: float, rate: float) -> None:
        nonlocal best, best_score, evaluated
        if i == n:
            evaluated += 1
            q = 1.0 - miss
            score = q / e if ratio else q - e * eps  # equal quality: the cheaper plan
            if score > best_score:
                best, best_score = list(picks), score
            return
        for j, (model, oq, oe, orate) in enumerate(table[i]):
            if distinct and model in taken:
                continue
            if orate < rate * (1 - eps):
                continue  # a chain runs fastest first: a later stage never uses a cheaper model
            e_low = e + oe + min_e_after[i + 1]
            if budget is not None and e_low > budget * (1 + eps):
                break  # cheapest first: every later option costs more
            step_miss = miss * (1.0 - oq if i == n - 1 else 1.0 - DRAFT_HELP * oq)
            q_high = 1.0 - step_miss * min_miss_after[i + 1]
            if floor is not None and q_high < floor * (1 - eps):
                continue
            if (q_high / e_low if ratio and e_low > 0 else q_high) <= best_score:
                continue
            picks[i] = j
            taken.add(model)
            visit(i + 1, step_miss, e + oe, orate)
            taken.discard(model)

    visit(0, 1.0, 0.0, 0.0)
    return best, best_score, evaluated


def _plan(constraint: EnergyConstraint, slots: list[StageSlot], table: Table, picks: list[int], full_q: float,
          full_e: float, budget: float | None, notes: list[str], evaluated: int) -> EnergyPlan:
    stages = []
    for slot, options, j in zip(slots, table, picks, strict=True):
        model, _, joules, _ = options[j]
        stages.append(ChosenStage(slot.purpose, model, slot.candidates[model], slot.expected_tokens(), joules,
                                  slot.name))
    quality, joules = _totals(table, picks)
    return EnergyPlan(constraint.profile, tuple(stages), quality, joules, full_e, full_q, budget, tuple(notes),
                      evaluated, constraint.max_tokens_per_stage)
