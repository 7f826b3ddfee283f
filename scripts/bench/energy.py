"""Quality-weighted energy per answer under each energy profile, against always-the-largest-model.

A fixed mix of queries goes through the routing planner under the survival,
balanced and performance profiles; each plan's energy comes from the cost
model with tokens/s measured by `mirador energy calibrate` (the real code
path: two runs per model, the server's own eval stats). The baseline, measured
in the same run, answers every query in one stage with the largest installed
model, and is credited with the full-power plan's quality (never less than
any plan here), so the ratio is conservative.

Without --host, the models are the scripted server's, replaying decode rates
of an M1 Pro (llama.cpp's Apple Silicon table: 7B Q4_0 at 36.4 tok/s,
scaled by each model's bytes): the numbers a laptop would measure, not ones
measured on this machine. With --host, the real server's installed models
are calibrated instead.

Also: the optimizer's time for 10 models × 3 stages against one routing
decision (classification and plan), in the same run.
Run: .venv/bin/python scripts/bench/energy.py [--host HOST] [--verbose]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from benchlib import ROOT, scripted_server

sys.path.insert(0, str(ROOT))

from mirador.config import Paths  # noqa: E402
from mirador.energy.costs import CostModel, Measurements, measurements_path  # noqa: E402
from mirador.energy.models import ModelFacts, bits_per_weight  # noqa: E402
from mirador.energy.optimizer import StageSlot, optimize  # noqa: E402
from mirador.energy.planning import StepCandidates, fit_chain  # noqa: E402
from mirador.energy.profiles import PROFILES, ProfileDecision, constraint_for  # noqa: E402

# name -> (parameter size, quantization): a 10-model laptop install the capability matrix knows.
MODELS = {
    "llama3.2:1b": ("1.24B", "Q8_0"), "qwen2.5:1.5b": ("1.54B", "Q4_K_M"), "qwen2.5-coder:1.5b": ("1.54B", "Q4_K_M"),
    "llama3.2:3b": ("3.21B", "Q4_K_M"), "qwen2.5:3b": ("3.09B", "Q4_K_M"), "qwen2.5:7b": ("7.62B", "Q4_K_M"),
    "qwen2.5-coder:7b": ("7.62B", "Q4_K_M"), "llama3.1:8b": ("8.03B", "Q4_K_M"), "gemma2:9b": ("9.24B", "Q4_0"),
    "phi4:14b": ("14.7B", "Q4_K_M"),
}
NO_FLOOR = "balanced, no quality floor"
M1_PRO_7B_Q4_0_TPS = 36.4  # llama.cpp discussion #4167, M1 Pro 16-core GPU, LLaMA 7B (6.74B) Q4_0, tg128
QUERIES = [
    "what's the capital of australia", "how long should I boil an egg", "why is the sky blue",
    "what time zone is tokyo in", "is it safe to eat raw cookie dough", "recommend a good sci-fi book",
    "my flask app returns 500 on post requests but works locally",
    "write a python function that merges two sorted lists",
    "why does my rust code say borrowed value does not live long enough",
    "explain what a race condition is with an example in go",
    "solve for x: 3x + 7 = 22", "what is the derivative of x^3 * sin(x)",
    "prove that the square root of 2 is irrational",
    "write a short story about a robot who learns to garden", "a haiku about autumn rain",
    "should I refinance my car loan if the new rate is two points lower",
    "how much should I have saved for retirement by 40",
    "compare the causes of the first and second world wars", "what does research say about intermittent fasting",
    "summarize this: the meeting covered the q3 roadmap, hiring for two roles, and the office move in may",
    "translate 'where is the train station' into french and german",
    "give me three ideas for a birthday party for a 6 year old", "how do vaccines train the immune system",
    "what is the difference between tcp and udp",
]


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    """benchlib's table, for any number of columns."""
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def m1_pro_rate(parameter_size: str, quantization: str) -> float:
    params = float(parameter_size.rstrip("B"))
    reference_bytes = 6.74 * bits_per_weight("Q4_0")
    return min(220.0, M1_PRO_7B_Q4_0_TPS * reference_bytes / (params * bits_per_weight(quantization)))


async def calibrate_all(host: str, home: Path) -> list[ModelFacts]:
    from mirador.config import normalize_host
    from mirador.energy.calibrate import calibrate_model, store
    from mirador.runtime.client import OllamaClient

    settings = SimpleNamespace(paths=Paths(home / "config", home / "data"))
    async with OllamaClient(normalize_host(host)) as client:
        facts = [ModelFacts.from_tags(entry) for entry in await client.tags()]
        results = [await calibrate_model(client, f.name) for f in facts if "embed" not in f.name]
    store(results, settings, facts)
    return facts


def plan_energy(routed, costs: CostModel) -> tuple[float, float, tuple[str, ...]]:
    """(joules, quality, models) of a routed plan, by the same rules the optimizer scores with."""
    from mirador.energy.planning import _purpose

    slots = [StageSlot(_purpose(i, len(routed.choices)), {c.model: c.confidence})
             for i, c in enumerate(routed.choices)]
    full = optimize(slots, constraint_for(ProfileDecision("performance", "", "auto")), costs)
    return full.joules, full.quality, full.models


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", help="calibrate this server's real models instead of the scripted ones")
    parser.add_argument("--verbose", action="store_true", help="every query's plan under every profile")
    parser.add_argument("--runs", type=int, default=200, help="timing repetitions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mirador-bench-energy-") as tmp:
        home = Path(tmp)
        os.environ["MIRADOR_HOME"] = str(home)
        started = time.perf_counter()
        if args.host:
            facts = asyncio.run(calibrate_all(args.host, home))
            source = f"calibrated on {args.host}"
        else:
            scripted = {name: {"parameter_size": size, "quantization_level": quant, "num_tokens": 32,
                               "rate": round(m1_pro_rate(size, quant), 1), "text": ""}
                        for name, (size, quant) in MODELS.items()}
            with scripted_server(scripted) as (host, _):
                facts = asyncio.run(calibrate_all(host, home))
            source = "calibrated against the scripted server replaying M1 Pro decode rates"
        calibrate_s = time.perf_counter() - started
        measurements = Measurements.load(measurements_path(home / "data"))
        return report(facts, measurements, source, calibrate_s, args)


def report(facts: list[ModelFacts], measurements: Measurements, source: str, calibrate_s: float,
           args: argparse.Namespace) -> int:
    from mirador.routing.classify import classify_fast
    from mirador.routing.installed import installed_models
    from mirador.routing.matrix import load_matrix
    from mirador.routing.planner import PlanConstraints, plan

    matrix = load_matrix(use_cache=False)
    installed = installed_models(matrix, [{"name": f.name, "details": {"parameter_size": f"{f.params_b}B"}}
                                          for f in facts])
    costs = CostModel({f.name: f for f in facts}, measurements)
    largest = max((m for m in installed if m.kind == "chat"), key=lambda m: m.params_b or 0).name
    rows = [("model", "tok/s (source)", "J/token")]
    for f in sorted(facts, key=lambda f: f.params_b or 0):
        c = costs.cost(f.name)
        rows.append((f.name, f"{c.tokens_per_s:.1f} ({c.tokens_per_s_source})", f"{c.joules_per_token:.3f}"))
    print_table(f"cost model: tokens/s {source} in {calibrate_s:.0f} s; power {costs.active_w:g} W "
                f"({costs.active_w_source})", rows)

    totals = {name: [0.0, 0.0] for name in (*PROFILES, "baseline", NO_FLOOR)}
    detail = [("query", "profile", "models", "J", "quality")]
    for query in QUERIES:
        analysis = classify_fast(query, matrix)
        full_q = None
        for profile in reversed(PROFILES):  # performance first: its quality is the baseline's credit
            constraint = constraint_for(ProfileDecision(profile, "bench", "auto"), None, costs)
            routed = plan(analysis, matrix, installed, PlanConstraints(energy=constraint))
            joules, quality, models = plan_energy(routed, costs)
            full_q = quality if profile == "performance" else full_q
            totals[profile][0] += joules
            totals[profile][1] += quality
            detail.append((query[:40], profile, " → ".join(models), f"{joules:.0f}", f"{quality:.2f}"))
            if profile == "balanced":  # the literal objective: quality per joule, no floor
                bare = dataclasses.replace(constraint, min_quality_fraction=None)
                joules, quality, models = plan_energy(plan(analysis, matrix, installed,
                                                           PlanConstraints(energy=bare)), costs)
                totals[NO_FLOOR][0] += joules
                totals[NO_FLOOR][1] += quality
        base = costs.joules(largest, 450, 0)  # one plain answer, the optimizer's length for one
        totals["baseline"][0] += base
        totals["baseline"][1] += full_q
        detail.append((query[:40], "baseline", largest, f"{base:.0f}", f"{full_q:.2f}"))
    if args.verbose:
        print_table("every plan", detail)

    n = len(QUERIES)
    base_per_q = totals["baseline"][0] / totals["baseline"][1]
    rows = [("plan", "J/answer", "quality", "J per quality unit", "x better than baseline")]
    for name in ("baseline", *reversed(PROFILES), NO_FLOOR):
        joules, quality = totals[name]
        per_q = joules / quality
        rows.append((name if name != "baseline" else f"always {largest}", f"{joules / n:.0f}", f"{quality / n:.3f}",
                     f"{per_q:.0f}", f"{base_per_q / per_q:.2f}"))
    print_table(f"quality-weighted energy per answer, {n} queries (goal: balanced 3x better than the baseline)",
                rows)
    balanced = base_per_q / (totals["balanced"][0] / totals["balanced"][1])

    timing = time_optimizer(matrix, installed, costs, args.runs)
    print_table("optimizer for 10 models x 3 stages against one routing decision (median)", [
        ("work", "median µs", "x one routing decision"),
        ("routing decision (classify + plan)", f"{timing['route']:.1f}", "1.00"),
        ("optimizer, balanced, 10 x 3", f"{timing['optimizer']:.1f}", f"{timing['optimizer'] / timing['route']:.2f}"),
        ("routing decision with balanced energy", f"{timing['route_energy']:.1f}",
         f"{timing['route_energy'] / timing['route']:.2f}"),
    ])
    print(f"\nresult: balanced is {balanced:.2f}x better than always {largest} (goal 3x)")
    return 0


def time_optimizer(matrix, installed, costs: CostModel, runs: int) -> dict[str, float]:
    from mirador.routing.classify import classify_fast
    from mirador.routing.planner import PlanConstraints, plan

    names = [m.name for m in installed if m.kind == "chat"][:10]
    steps = [StepCandidates(step, [(name, 0.5 + 0.04 * i + 0.01 * k) for i, name in enumerate(names)])
             for k, step in enumerate(("first", "middle", "last"))]
    balanced = constraint_for(ProfileDecision("balanced", "bench", "auto"), None, costs)
    query = "should I refinance my car loan if the new rate is two points lower"

    def route(constraints=None) -> None:
        plan(classify_fast(query, matrix), matrix, installed, constraints)

    samples: dict[str, list[float]] = {"route": [], "optimizer": [], "route_energy": []}
    work = {"route": route, "optimizer": lambda: fit_chain(steps, names[:3], balanced),
            "route_energy": lambda: route(PlanConstraints(energy=balanced))}
    for _ in range(runs):  # interleaved: machine noise hits all three alike
        for name, run in work.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


if __name__ == "__main__":
    raise SystemExit(main())
