"""Cost model, profiles and the optimizer, in-process (the CLI tests run them as users do)."""

from __future__ import annotations

import itertools
import random
import time
from types import SimpleNamespace

import pytest

from mirador.energy.costs import CostModel, Measurements, default_joules_per_token
from mirador.energy.models import ModelFacts, params_from_name, parse_parameter_size, prior_quality
from mirador.energy.optimizer import StageSlot, optimize, plan_quality, slots_for_chain
from mirador.energy.profiles import ProfileDecision, constraint_for, decide_profile
from mirador.energy.sensors import PowerState
from mirador.errors import UsageError

CHAIN = ["llama3.2:1b", "llama3.2:3b", "llama3.1:8b"]
PURPOSES = ["quick_ack", "core_analysis", "deep_synthesis"]


def facts(*pairs: tuple[str, float]) -> dict[str, ModelFacts]:
    return {name: ModelFacts(name, size, "Q4_K_M", None, "server") for name, size in pairs}


def chain_costs() -> CostModel:
    return CostModel(facts(("llama3.2:1b", 1.24), ("llama3.2:3b", 3.21), ("llama3.1:8b", 8.03)))


def constraint(profile: str, costs: CostModel, settings=None):
    return constraint_for(ProfileDecision(profile, "test", "auto"), settings, costs)


# -- model facts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", [
    ("llama3.1:8b", 8.0), ("qwen2.5:0.5b-instruct-q4_K_M", 0.5), ("smollm2:135m", 0.135),
    ("mixtral:8x7b", 56.0), ("phi3:latest", None), ("registry.ollama.ai/library/gemma2:2b", 2.0),
])
def test_params_from_name(name, params):
    assert params_from_name(name) == params


def test_facts_from_tags_prefer_the_server_then_the_file_size():
    entry = {"name": "x:latest", "size": 4_920_000_000,
             "details": {"parameter_size": "8.0B", "quantization_level": "Q4_K_M"}}
    assert ModelFacts.from_tags(entry).params_b == 8.0
    entry["details"]["parameter_size"] = "?"
    by_size = ModelFacts.from_tags(entry)
    assert by_size.params_source == "file size" and by_size.params_b == pytest.approx(8.1, rel=0.02)
    assert ModelFacts.from_tags({"name": "tiny:1b"}).params_source == "name"
    assert parse_parameter_size("135M") == pytest.approx(0.135) and parse_parameter_size(None) is None


def test_prior_quality_grows_with_size():
    sizes = [0.135, 0.5, 1.2, 3.2, 8, 14, 70]
    qualities = [prior_quality(s) for s in sizes]
    assert qualities == sorted(qualities) and 0.2 <= qualities[0] and qualities[-1] <= 0.95


# -- cost model ------------------------------------------------------------------------------------


def test_defaults_follow_size_and_quantization():
    assert default_joules_per_token(8.0, "Q4_K_M") == pytest.approx(1.08)
    assert default_joules_per_token(8.0, "Q8_0") == pytest.approx(1.08 * 8.5 / 4.85)
    cost = chain_costs().cost("llama3.1:8b")
    assert cost.source == "default" and cost.power_w == 20.0
    assert cost.tokens_per_s == pytest.approx(20.0 / cost.joules_per_token)


def test_measured_tokens_per_second_refine_the_default():
    measurements = Measurements(rates={"llama3.1:8b": {"tokens_per_s": 25.0, "samples": 12}})
    cost = CostModel(facts(("llama3.1:8b", 8.0)), measurements).cost("llama3.1:8b")
    assert cost.source == "measured tokens/s" and cost.tokens_per_s_source == "measured (12 answers)"
    assert cost.joules_per_token == pytest.approx(20.0 / 25.0)


def test_too_few_answers_fall_back_to_calibration_then_default():
    measurements = Measurements(rates={"m:8b": {"tokens_per_s": 99.0, "samples": 2}},
                                calibration={"m:8b": {"tokens_per_s": 30.0, "load_ms": 900.0}})
    cost = CostModel(measurements=measurements).cost("m:8b")
    assert cost.tokens_per_s == 30.0 and cost.tokens_per_s_source == "measured (calibrate)"
    assert cost.load_ms == 900.0 and cost.params_source == "name"


def test_measured_power_from_calibration():
    measurements = Measurements(calibration={"m:8b": {"tokens_per_s": 20.0, "joules_per_token": 0.6,
                                                      "power_source": "RAPL"}})
    cost = CostModel(measurements=measurements).cost("m:8b")
    assert cost.source == "measured power" and cost.power_source == "measured (RAPL)"
    assert cost.power_w == pytest.approx(12.0) and cost.joules_per_token == pytest.approx(0.6)


def test_measurements_file_round_trip_and_damage(tmp_path):
    path = tmp_path / "energy.json"
    measurements = Measurements()
    for tps in (40.0, 50.0, 60.0):
        measurements.observe("m:3b", tps, 100, 1200.0)
    measurements.observe("m:3b", 5000.0, 3, None)  # a 3-token answer says nothing about speed
    measurements.remember_facts(ModelFacts("m:3b", 3.2, "Q4_K_M", None, "server"))
    measurements.save(path)
    again = Measurements.load(path)
    assert again.rates["m:3b"]["tokens_per_s"] == pytest.approx(50.0) and again.rates["m:3b"]["samples"] == 3
    assert CostModel(measurements=again).facts_for("m:3b").params_b == 3.2
    path.write_text("{not json")
    assert Measurements.load(path).rates == {}
    path.write_text('{"rates": [1, 2], "facts": {"x": 3}}')
    assert Measurements.load(path) == Measurements()


def test_rebuild_rates_from_history_samples():
    measurements = Measurements(rates={"gone:1b": {"tokens_per_s": 1.0, "samples": 9}})
    measurements.rebuild_rates({"m:1b": [(100.0, 0.5), (120.0, 800.0), (110.0, None)]})
    assert set(measurements.rates) == {"m:1b"}
    assert measurements.rates["m:1b"]["tokens_per_s"] == 110.0 and measurements.rates["m:1b"]["load_ms"] == 800.0


# -- profiles --------------------------------------------------------------------------------------


def settings(**values):
    return SimpleNamespace(sources={k: "config.yaml" for k in values}, **values)


@pytest.mark.parametrize("state,profile", [
    (PowerState(plugged=True), "performance"),
    (PowerState(plugged=True, battery_percent=5, has_battery=True), "performance"),
    (PowerState(plugged=False, battery_percent=15, has_battery=True), "survival"),
    (PowerState(plugged=False, battery_percent=20, has_battery=True), "balanced"),
    (PowerState(plugged=False, battery_percent=None, has_battery=True), "balanced"),
])
def test_auto_profile_from_the_power_state(state, profile):
    assert decide_profile(None, None, state).profile == profile


def test_profile_overrides_and_thresholds():
    low = PowerState(plugged=False, battery_percent=15, has_battery=True)
    assert decide_profile("performance", None, low).profile == "performance"
    chosen = decide_profile(None, settings(energy_profile="balanced"), low)
    assert chosen.profile == "balanced" and chosen.chosen_by == "config.yaml"
    assert decide_profile(None, settings(energy_profile="auto", energy_survival_below=10.0), low).profile == "balanced"
    with pytest.raises(UsageError):
        decide_profile("turbo", None, low)


def test_survival_reason_names_the_threshold():
    decision = decide_profile(None, None, PowerState(plugged=False, battery_percent=15, has_battery=True))
    assert decision.reason == "on battery at 15%, below 20%"


# -- optimizer -------------------------------------------------------------------------------------


def test_three_profiles_on_the_default_chain():
    costs = chain_costs()
    slots = slots_for_chain(CHAIN, PURPOSES, costs)
    performance = optimize(slots, constraint("performance", costs), costs, reference=CHAIN)
    assert performance.models == tuple(CHAIN)
    survival = optimize(slots, constraint("survival", costs), costs, reference=CHAIN)
    assert survival.models == ("llama3.2:1b",) and survival.stages[0].purpose == "answer"
    assert survival.stages[0].tokens == 200
    balanced = optimize(slots, constraint("balanced", costs), costs, reference=CHAIN)
    assert balanced.joules <= 0.5 * performance.joules
    assert balanced.quality >= 0.8 * performance.quality
    assert balanced.quality_per_joule > performance.quality_per_joule
    assert balanced.full_power_joules == pytest.approx(performance.joules)


def test_budget_fraction_comes_from_settings():
    costs = chain_costs()
    slots = slots_for_chain(CHAIN, PURPOSES, costs)
    tight = constraint("balanced", costs, settings(energy_balanced_budget=0.15))
    plan = optimize(slots, tight, costs, reference=CHAIN, distinct=True)
    assert plan.budget_joules == pytest.approx(0.15 * plan.full_power_joules)
    assert plan.joules <= plan.budget_joules and plan.models == ("llama3.2:1b",)
    assert plan.notes and "quality" in plan.notes[0]  # the floor could not be kept: said so
    hopeless = optimize(slots, constraint("balanced", costs, settings(energy_balanced_budget=0.01)), costs)
    assert hopeless.models == ("llama3.2:1b",) and hopeless.stages[0].purpose == "answer"
    assert "no plan fits the energy budget" in hopeless.notes[-1]


def test_no_eligible_model_falls_back_to_the_smallest_and_says_so():
    costs = CostModel(facts(("llama3.1:8b", 8.0), ("qwen2.5:14b", 14.8)))
    slots = slots_for_chain(["llama3.1:8b", "qwen2.5:14b"], ["quick_ack", "deep_synthesis"], costs)
    plan = optimize(slots, constraint("survival", costs), costs)
    assert plan.models == ("llama3.1:8b",)
    assert "falling back to the smallest installed model, llama3.1:8b (8B)" in plan.notes[0]
    assert "2B" in plan.notes[0]


def test_a_later_stage_never_uses_a_cheaper_model():
    costs = chain_costs()
    # The quick stage is told the 3B is great and the final stage that the 1B is: the chain must not invert.
    slots = [StageSlot("quick_ack", {"llama3.2:3b": 0.99, "llama3.2:1b": 0.3}),
             StageSlot("deep_synthesis", {"llama3.2:1b": 0.9, "llama3.2:3b": 0.6})]
    plan = optimize(slots, constraint("balanced", costs), costs)
    rates = [costs.cost(m).joules_per_token for m in plan.models]
    assert rates == sorted(rates)


def brute_force(slots: list[StageSlot], costs: CostModel, budget: float | None, floor: float | None,
                distinct: bool = False):
    """Every shape and every assignment: the reference the branch and bound must match."""
    best = None
    optional = [i for i, s in enumerate(slots) if s.optional]
    for r in range(len(optional) + 1):
        for left_out in itertools.combinations(optional, r):
            kept = [s for i, s in enumerate(slots) if i not in left_out]
            if len(kept) == 1 and len(slots) > 1:
                kept = [kept[0].replace(purpose="answer")]
            for models in itertools.product(*(list(s.candidates) for s in kept)):
                if distinct and len(set(models)) < len(models):
                    continue
                rates = [costs.cost(m).joules_per_token for m in models]
                if any(b < a * (1 - 1e-9) for a, b in itertools.pairwise(rates)):
                    continue
                q = plan_quality([s.candidates[m] for s, m in zip(kept, models, strict=True)])
                e, earlier = 0.0, 0
                for s, m in zip(kept, models, strict=True):
                    e += costs.joules(m, s.expected_tokens(), s.prompt_tokens + earlier)
                    earlier += s.expected_tokens()
                if budget is not None and e > budget * (1 + 1e-9) or floor is not None and q < floor * (1 - 1e-9):
                    continue
                if best is None or q / e > best[0]:
                    best = (q / e, models)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_branch_and_bound_matches_brute_force(seed):
    rng = random.Random(seed)
    sizes = sorted(rng.uniform(0.1, 40) for _ in range(10))
    names = [f"m{i}:{s:.1f}b" for i, s in enumerate(sizes)]
    costs = CostModel({n: ModelFacts(n, s, "Q4_K_M", None, "server") for n, s in zip(names, sizes, strict=True)})
    slots = [StageSlot(p, {n: rng.uniform(0.2, 0.95) for n in rng.sample(names, rng.randint(4, 10))},
                       prompt_tokens=rng.randint(0, 300), optional=p != "deep_synthesis") for p in PURPOSES]
    fraction = rng.choice([0.2, 0.5, 0.9])
    balanced = constraint_for(ProfileDecision("balanced", "", "auto"),
                              settings(energy_balanced_budget=fraction), costs)
    distinct = seed % 2 == 1
    plan = optimize(slots, balanced, costs, distinct=distinct)
    expected = brute_force(slots, costs, plan.budget_joules, 0.8 * plan.full_power_quality, distinct)
    if expected is None:
        assert plan.notes  # infeasible: the fallback was taken and said so
    else:
        assert plan.quality_per_joule == pytest.approx(expected[0])
        assert plan.evaluated < 10 ** 3  # pruning did its work


def test_ten_models_three_stages_is_fast():
    rng = random.Random(7)
    names = [f"m{i}:{s}b" for i, s in enumerate([0.5, 1, 1.5, 2, 3, 4, 7, 8, 14, 32])]
    costs = CostModel({n: ModelFacts.from_name(n) for n in names})
    slots = [StageSlot(p, {n: rng.uniform(0.3, 0.95) for n in names}, optional=p != "deep_synthesis")
             for p in PURPOSES]
    balanced = constraint("balanced", costs)
    start = time.perf_counter()
    for _ in range(20):
        optimize(slots, balanced, costs)
    assert (time.perf_counter() - start) / 20 < 0.05


# -- the planner's door ------------------------------------------------------------------------------


def test_fit_chain_maps_steps_to_purposes_and_keeps_one_model_per_step():
    from mirador.energy.planning import StepCandidates, changes_nothing, fit_chain

    costs = chain_costs()
    steps = [StepCandidates("extraction", [("llama3.2:1b", 0.55), ("llama3.2:3b", 0.5)]),
             StepCandidates("analysis", [("llama3.2:3b", 0.75), ("llama3.1:8b", 0.68), ("llama3.2:1b", 0.4)]),
             StepCandidates("synthesis", [("llama3.1:8b", 0.85), ("llama3.2:3b", 0.64), ("llama3.2:1b", 0.6)])]
    assert changes_nothing(constraint("performance", costs))
    survival = fit_chain(steps, CHAIN, constraint("survival", costs))
    assert survival.models == ("llama3.2:1b",) and survival.stages[0].name == "synthesis"
    assert survival.stages[0].quality == 0.6  # the last step's figure for it
    balanced = fit_chain(steps, CHAIN, constraint("balanced", costs),
                         [ModelFacts("llama3.2:3b", 3.21, "Q8_0", None, "server")])
    assert len(set(balanced.models)) == len(balanced.models)
    assert balanced.stages[-1].name == "synthesis" and balanced.joules <= balanced.budget_joules
    assert costs.facts_for("llama3.2:3b").quantization == "Q8_0"  # the planner's facts reached the costs
