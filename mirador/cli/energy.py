"""`mirador energy`: the power state, the profile it selects, and what each model costs here.

    mirador energy [--profile P] [--json]     state, profile and why, plans, per-model costs
    mirador energy profile [NAME]             show or set: auto, survival, balanced, performance
    mirador energy calibrate [-m MODEL]…      measure tokens/s, load time and J/token
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from mirador.errors import MiradorError

_EMBEDDING_NAME = re.compile(r"embed|minilm|\bbge\b|bge-|e5-|gte-")


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    from mirador.energy.profiles import PROFILE_CHOICES

    parser.add_argument("--profile", choices=PROFILE_CHOICES, help="show what this profile would do")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run_show)
    actions = parser.add_subparsers(dest="action", metavar="{profile,calibrate}")
    profile = actions.add_parser("profile", help="show or set the energy profile",
                                 description="show or set the energy profile (auto decides from the power state)")
    profile.add_argument("name", nargs="?", choices=PROFILE_CHOICES, metavar="NAME",
                         help=f"one of {', '.join(PROFILE_CHOICES)}")
    profile.set_defaults(run=run_profile)
    calibrate = actions.add_parser("calibrate", help="measure every installed model's speed and energy",
                                   description="run a short fixed prompt on each installed model and keep its "
                                               "tokens/s, load time and, where a sensor allows, J/token")
    calibrate.add_argument("-m", "--model", action="append", default=[], metavar="MODEL",
                           help="only this model (repeatable); default: every installed chat model")
    calibrate.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                           help="one JSON object per model")
    calibrate.set_defaults(run=run_calibrate)


# -- mirador energy ----------------------------------------------------------------------------------


def run_show(args: argparse.Namespace) -> int:
    from mirador.config import load_settings
    from mirador.energy.profiles import PROFILES, ProfileDecision, constraint_for, decide_profile
    from mirador.energy.sensors import read_power_state

    settings = load_settings()
    state = read_power_state()
    decision = decide_profile(args.profile, settings, state)
    installed, server_note = _installed(settings)
    costs = _cost_model(settings, installed)
    chain, chain_label = _chain(settings, installed)
    plans = []
    if chain:
        from mirador.energy.optimizer import optimize, slots_for_chain
        from mirador.stream.chain import chain_purposes

        slots = slots_for_chain(chain, chain_purposes(len(chain)), costs)
        for name in PROFILES:
            constraint = constraint_for(ProfileDecision(name, "", "auto"), settings, costs)
            plans.append((name, optimize(slots, constraint, costs, reference=chain)))
    models = sorted({*(f.name for f in installed), *chain}, key=lambda m: (costs.cost(m).params_b, m))
    active = constraint_for(decision, settings, costs)
    if args.json:
        print(json.dumps({
            "power": {**_state_dict(state), "description": state.describe()},
            "profile": {"name": decision.profile, "reason": decision.reason, "chosen_by": decision.chosen_by,
                        "rule": active.describe()},
            "plans": [{"profile": name, "models": list(plan.models), "joules": round(plan.joules, 1),
                       "quality": round(plan.quality, 3), "budget_joules": plan.budget_joules,
                       "notes": list(plan.notes)} for name, plan in plans],
            "active_watts": costs.active_w, "active_watts_source": costs.active_w_source,
            "models": [costs.cost(m).to_dict() for m in models],
            "notes": [*state.notes, *([server_note] if server_note else [])],
        }, ensure_ascii=False))
        return 0
    _print_show(state, decision, active.describe(), plans, f"{chain_label} ({' → '.join(chain)})",
                [costs.cost(m) for m in models], costs, server_note)
    return 0


def _print_show(state: Any, decision: Any, rule: str, plans: list[tuple[str, Any]], chain: str,
                costs_rows: list[Any], costs: Any, server_note: str | None) -> None:
    from mirador.cli.common import print_table

    print(f"power    {state.describe()}  [{state.source}]")
    for note in state.notes:
        print(f"         ({note})")
    print(f"profile  {decision.profile}: {decision.reason}" + (f" ({decision.chosen_by})"
                                                                if decision.chosen_by == "auto" else ""))
    print(f"rule     {rule}")
    if plans:
        print(f"\nplans for {chain}:")
        width = max(len(" → ".join(plan.models)) for _, plan in plans)
        for name, plan in plans:
            mark = "*" if name == decision.profile else " "
            extra = f"  budget {plan.budget_joules:.0f} J" if plan.budget_joules else ""
            print(f"  {mark} {name:<11}  {' → '.join(plan.models):<{width}}  {plan.joules:6.0f} J"
                  f"  quality {plan.quality:.2f}{extra}")
            for note in plan.notes:
                print(f"      {note}")
    if server_note:
        print(f"\n{server_note}")
    if not costs_rows:
        return
    print()
    print_table(
        ["model", "params", "quant", "tok/s", "tok/s from", "J/token", "J/token from"],
        [[c.model, f"{c.params_b:g}B", c.quantization or "-", f"{c.tokens_per_s:.1f}", c.tokens_per_s_source,
          f"{c.joules_per_token:.3f}", _joules_from(c)] for c in costs_rows],
        title=f"cost per model (active power {costs.active_w:g} W: {costs.active_w_source})",
    )


def _joules_from(cost: Any) -> str:
    if cost.source == "measured power":
        return cost.power_source
    return "measured tokens/s" if cost.source == "measured tokens/s" else "default (size, quantization)"


def _state_dict(state: Any) -> dict[str, Any]:
    return {"plugged": state.plugged, "has_battery": state.has_battery, "battery_percent": state.battery_percent,
            "seconds_left": state.seconds_left, "draw_w": state.draw_w, "source": state.source}


def _installed(settings: Any) -> tuple[list[Any], str | None]:
    """The server's chat models as ModelFacts; an unreachable server is a note, not a failure."""
    from mirador.cli.common import call_server
    from mirador.energy.models import ModelFacts

    async def fetch(client: Any) -> list[dict[str, Any]]:
        return await client.tags()

    try:
        tags = call_server(settings, fetch)
    except MiradorError as exc:
        return [], f"installed models unknown: {exc.message}"
    facts = [ModelFacts.from_tags(entry) for entry in tags]
    return [f for f in facts if f.name and not _EMBEDDING_NAME.search(f.name.lower())], None


def _cost_model(settings: Any, installed: list[Any]) -> Any:
    """Costs with the speeds in history.db folded into energy.json (the cache `ask` reads)."""
    from mirador.energy.costs import CostModel, Measurements, measurements_path

    path = measurements_path(settings.paths.data_dir)
    measurements = Measurements.load(path)
    for fact in installed:
        measurements.remember_facts(fact)
    if settings.paths.history_db.exists():
        from mirador.history import HistoryStore

        with HistoryStore(settings.paths.history_db) as store:
            measurements.rebuild_rates(store.stage_rates())
    if settings.paths.data_dir.exists():
        try:
            measurements.save(path)
        except OSError:
            pass  # a read-only data dir: the figures are shown all the same
    return CostModel.load(installed, settings, measurements)


def _chain(settings: Any, installed: list[Any]) -> tuple[list[str], str]:
    """The chain setting, less what is not installed (all of it when the server is unknown); with
    none of it installed, the smallest, a middle and the largest installed model."""
    names = {f.name for f in installed} | {f.name.removesuffix(":latest") for f in installed}
    present = [m for m in settings.chain if m in names or not installed]
    if present:
        return present, "the chain setting"
    by_size = sorted(installed, key=lambda f: (f.params_b or 7.0, f.name))
    picks = by_size if len(by_size) <= 3 else [by_size[0], by_size[len(by_size) // 2], by_size[-1]]
    return [f.name for f in picks], "a chain of installed models"


# -- mirador energy profile --------------------------------------------------------------------------


def run_profile(args: argparse.Namespace) -> int:
    from mirador.config import load_settings, set_setting
    from mirador.energy.profiles import decide_profile

    if args.name:
        set_setting("energy_profile", args.name)
    settings = load_settings()
    decision = decide_profile(None, settings)
    setting = settings.energy_profile
    where = settings.sources.get("energy_profile", "default")
    print(f"energy profile setting: {setting} ({where})")
    print(f"in force now: {decision.profile}: {decision.reason}")
    return 0


# -- mirador energy calibrate ------------------------------------------------------------------------


def run_calibrate(args: argparse.Namespace) -> int:
    import asyncio

    from mirador.config import load_settings
    from mirador.energy.calibrate import calibrate_model, store
    from mirador.runtime.client import OllamaClient

    settings = load_settings()
    as_json = getattr(args, "json", False)
    results = []

    async def main() -> list[Any]:
        from mirador.energy.models import ModelFacts

        async with OllamaClient(settings.host, connect_timeout=settings.connect_timeout) as client:
            facts = [ModelFacts.from_tags(entry) for entry in await client.tags()]
            known = {f.name for f in facts}
            wanted = args.model or [f.name for f in facts if not _EMBEDDING_NAME.search(f.name.lower())]
            for model in wanted:
                if model not in known and f"{model}:latest" not in known:
                    raise MiradorError(f"model '{model}' is not installed on {settings.host}",
                                       hint="`mirador models` lists what is installed")
            if not wanted:
                raise MiradorError(f"no chat model is installed on {settings.host}",
                                   hint="install one with: ollama pull llama3.2:1b")
            for model in wanted:
                if not as_json:
                    print(f"calibrating {model} …", end="", flush=True, file=sys.stderr)
                result = await calibrate_model(client, model, settings.keep_alive)
                results.append(result)
                _print_calibration(result, as_json)
            return facts

    facts = asyncio.run(main())
    store(results, settings, facts)
    failed = [r for r in results if r.error]
    return 1 if failed and len(failed) == len(results) else 0


def _print_calibration(result: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict(), ensure_ascii=False), flush=True)
        return
    print("\r", end="", file=sys.stderr)
    if result.error:
        print(f"{result.model}: failed: {result.error}")
        return
    parts = [f"{result.tokens_per_s:.1f} tok/s" if result.tokens_per_s else "no speed reported"]
    parts.append(f"load {result.load_ms:.0f} ms" if result.load_ms else "already loaded")
    if result.joules_per_token is not None:
        parts.append(f"{result.joules_per_token:.3f} J/token at {result.power_w:.1f} W ({result.power_source})")
    else:
        parts.append("no power sensor readable: J/token from the default power")
    print(f"{result.model}: " + ", ".join(parts), flush=True)
