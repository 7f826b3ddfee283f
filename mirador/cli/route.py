"""`mirador route "…" [--explain] [--json]`: the plan for a question, without running any model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mirador.errors import UsageError


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="*", help="the question; stdin is appended to it as material")
    parser.add_argument("--explain", action="store_true",
                        help="domain scores, each choice's reason, the fallbacks applied and why")
    parser.add_argument("--json", action="store_true", help="the whole plan as one JSON object")
    parser.add_argument("--fast", action="store_true",
                        help="keywords and patterns only, no embedding (what decides stage 1 of `ask`)")
    parser.add_argument("--profile", choices=("auto", "survival", "balanced", "performance"),
                        help="plan under this energy profile (default: the setting, else the power state)")
    parser.add_argument("--installed", metavar="MODELS",
                        help="plan over these comma-separated models instead of asking the server")
    parser.set_defaults(run=run_route)


def run_route(args: argparse.Namespace) -> int:
    from mirador.cli.ask import read_prompt
    from mirador.config import load_settings
    from mirador.routing.explain import plan_dict

    settings = load_settings()
    prompt = read_prompt(args.prompt)
    installed: list[str] | None = None
    if args.installed is not None:
        installed = [m.strip() for m in args.installed.split(",") if m.strip()]
        if not installed:
            raise UsageError("--installed names no model", hint="--installed llama3.2:1b,phi3:mini")
    routed, fast, timings, extra = _route(settings, prompt, installed, refine=not args.fast, profile=args.profile)
    report = plan_dict(routed, fast, timings)
    if args.json or args.explain:  # the short form does not show it: no extra plans for it
        report["speculation"] = _speculation(settings, prompt, fast, routed, extra, args.profile)
    if args.json:
        sys.stdout.write(json.dumps(report, ensure_ascii=False) + "\n")
    elif args.explain:
        _print_explained(report, prompt)
    else:
        _print_short(report)
    return 0


def _route(settings: Any, prompt: str, installed_names: list[str] | None, refine: bool, profile: str | None = None
           ) -> tuple[Any, Any, dict[str, float], tuple[Any, Any]]:
    import asyncio

    from mirador.energy.profiles import energy_constraint
    from mirador.routing.classify import classify_fast
    from mirador.routing.installed import fetch_tags, installed_models
    from mirador.routing.live import embedder_for
    from mirador.routing.matrix import load_matrix
    from mirador.routing.planner import PlanConstraints, plan

    timings: dict[str, float] = {}
    started = time.perf_counter()
    constraints = PlanConstraints(energy=energy_constraint(profile, settings),
                                  quality=_learned(settings, prompt, refine), personalized=settings.personalized)
    timings["energy"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    matrix = load_matrix(settings.paths)
    timings["matrix"] = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    fast = classify_fast(prompt, matrix)
    timings["classify_fast"] = (time.perf_counter() - started) * 1000

    async def work(client: Any) -> tuple[Any, Any]:
        if installed_names is not None:
            tags = [{"name": name} for name in installed_names]
        else:
            started = time.perf_counter()
            tags = await fetch_tags(client)
            timings["tags"] = (time.perf_counter() - started) * 1000
        analysis = fast
        embedder = embedder_for(settings, client) if refine else None
        if embedder is not None:
            analysis = await _refined(prompt, matrix, embedder, settings, fast, timings)
        installed = installed_models(matrix, tags)
        return analysis, plan(analysis, matrix, installed, constraints)

    if installed_names is not None and not refine:
        analysis, routed = asyncio.run(_offline(work))
    else:
        from mirador.cli.common import call_server

        analysis, routed = call_server(settings, work)
    timings["planner"] = routed.elapsed_ms
    return routed, fast, timings, (matrix, constraints)


def _speculation(settings: Any, prompt: str, fast: Any, routed: Any, extra: tuple[Any, Any],
                 profile: str | None) -> dict[str, Any]:
    """What `ask` would do with this query's first stage: the fast path's top interpretations and
    whether they would start together (mirador.predict.speculative)."""
    from mirador.predict.ask_speculation import choose
    from mirador.routing.interpret import describe, interpretations, top_margin

    matrix, constraints = extra
    found = interpretations(prompt, fast, matrix, routed.installed, constraints)
    margin = top_margin(fast.scores)
    chosen, why_not = choose(margin, lambda: found, settings, profile, bool(settings.speculate))
    return {"margin": margin, "threshold": settings.speculate_margin, "interpretations": describe(found),
            "would_speculate": why_not is None, "models": [i.first_model for i in chosen] if why_not is None else [],
            "why_not": why_not}


def _learned(settings: Any, prompt: str, local: bool) -> Any:
    """Quality learned from ratings: the global table, plus (unless --fast) the rated past queries
    nearest this one in pattern memory. Memory that cannot be read costs a warning, not the plan."""
    if not settings.memory_enabled:
        return None
    from mirador.memory.learner import quality_for_plan
    from mirador.memory.patterns import exists

    hits: list[Any] = []
    if local and exists(settings):
        from mirador.cli.memory import memory_warning
        from mirador.errors import MiradorError
        from mirador.memory.observe import similar

        try:
            hits = similar(settings, prompt, 20, min_rating=1)
        except MiradorError as exc:
            memory_warning(exc, "the plan uses the global learned scores only")
    return quality_for_plan(settings.paths, hits)


async def _offline(work: Any) -> Any:
    return await work(None)


async def _refined(prompt: str, matrix: Any, embedder: Any, settings: Any, fast: Any,
                   timings: dict[str, float]) -> Any:
    """The embedding path; if it cannot run (no weights, no embedding model), the fast path stands, said so."""
    from mirador.errors import MiradorError

    try:
        from mirador.routing.classify_embed import classify_refined

        started = time.perf_counter()
        analysis = await classify_refined(prompt, matrix, embedder, settings.paths)
        timings["classify_refined"] = (time.perf_counter() - started) * 1000
        return analysis
    except (MiradorError, ImportError, OSError) as exc:
        reason = getattr(exc, "message", None) or str(exc)
        return fast._replace(notes=fast.notes + (f"embedding path unavailable ({reason}); fast path only",))


def _print_short(report: dict[str, Any]) -> None:
    analysis = report["analysis"]
    print(f"{report['domain']} (confidence {analysis['confidence']:.2f}"
          f"{', fallback' if analysis['fell_back'] else ''}): "
          + " → ".join(stage["model"] for stage in report["chain"]))


def _print_explained(report: dict[str, Any], prompt: str) -> None:
    analysis, fast = report["analysis"], report["fast_analysis"]
    words = len(prompt.split())
    shown = " ".join(prompt.split())
    shown = shown if len(shown) <= 100 else shown[:97] + "…"
    print(f"query: {shown!r}  ({words:,} words, ~{analysis['est_tokens']:,} tokens, {analysis['language']})")
    path = analysis["path"] if analysis["path"] == "fast" else f"refined with {analysis['path']}"
    print(f"\ndomain scores ({path}{'; fast path in brackets' if fast else ''}):")
    for domain, score in analysis["scores"].items():
        fast_score = f"  [{fast['scores'].get(domain, 0):.2f}]" if fast else ""
        matched = analysis["signals"].get(domain) or []
        why = f"  matched: {', '.join(matched[:8])}" + (" …" if len(matched) > 8 else "") if matched else ""
        print(f"  {domain:<20} {score:.2f}{fast_score}{why}")
    similarity = analysis["signals"].get("~similarity")
    if similarity:
        print(f"  closest examples (mean of the top 3): {', '.join(similarity[:4])}")
    verdict = f"{report['domain']}, confidence {analysis['confidence']:.2f}"
    if analysis["fell_back"]:
        verdict += f" (fallback: {analysis['top']} was not sure enough)"
    print(f"→ {verdict}")
    chat_models = [m for m in report["installed"] if m["kind"] == "chat"]
    print(f"\nchain ({len(report['chain'])} stage{'s' if len(report['chain']) != 1 else ''}, "
          f"chosen among {len(chat_models)} installed chat model{'s' if len(chat_models) != 1 else ''}):")
    for stage in report["chain"]:
        print(f"  {stage['stage']}. {stage['step']:<14} {stage['model']:<22} {stage['purpose']:<15} "
              f"confidence {stage['confidence']:.2f}  [{stage['via']}]")
        print(f"     {stage['reason']}")
    if report["fallbacks"]:
        print("\nfallbacks applied:")
        for f in report["fallbacks"]:
            used = f"→ {f['used']}" if f["used"] else "→ step dropped"
            print(f"  {f['step']}: wanted {f['wanted']} {used}: {f['why']}")
    if report["notes"]:
        print("\nnotes:")
        for note in report["notes"]:
            print(f"  {note}")
    print("\ninstalled:")
    for m in report["installed"]:
        what = m["matrix_model"] or ("strengths inferred: " + ", ".join(m["strengths"]))
        kind = "" if m["kind"] == "chat" else f" ({m['kind']}, not a chat model)"
        print(f"  {m['name']:<28} {what}{kind}")
    _print_speculation(report["speculation"])
    t = report["timings_ms"]
    parts = [f"{k.replace('_', ' ')} {v:.2f} ms" for k, v in t.items()]
    print("\ntimings: " + ", ".join(parts))


def _print_speculation(spec: dict[str, Any]) -> None:
    print(f"\ninterpretations (fast path; margin between the best two {spec['margin']:.2f}, "
          f"speculation below {spec['threshold']:.2f}):")
    for i in spec["interpretations"]:
        print(f"  {i['domain']:<20} {i['probability']:.2f}  stage 1 on {i['stage1_model']:<22} "
              f"chain {' → '.join(i['chain'])}")
    if spec["would_speculate"]:
        print(f"→ ask would start {len(spec['models'])} first stages together ({', '.join(spec['models'])}); "
              "the refined classifier keeps one, the others are cancelled")
    else:
        print(f"→ ask would not speculate: {spec['why_not']}")
