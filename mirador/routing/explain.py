"""A plan as plain data: what `mirador route --json` prints and `--explain` renders."""

from __future__ import annotations

from typing import Any

from mirador.routing.classify import QueryAnalysis
from mirador.routing.planner import Plan

PURPOSE_WORDS = {"answer": "answers", "quick_ack": "acknowledges", "core_analysis": "analyses",
                 "deep_synthesis": "synthesises"}


def purposes_for(count: int) -> list[str]:
    """Position decides the purpose, exactly as the chain executor assigns it."""
    if count == 1:
        return ["answer"]
    return ["quick_ack"] + ["core_analysis"] * (count - 2) + ["deep_synthesis"]


def analysis_dict(analysis: QueryAnalysis) -> dict[str, Any]:
    return {
        "domain": analysis.domain,
        "confidence": analysis.confidence,
        "top": analysis.top,
        "fell_back": analysis.fell_back,
        "path": analysis.path,
        "scores": analysis.scores,
        "signals": {d: list(s) for d, s in analysis.signals.items()},
        "steps": list(analysis.steps) if analysis.steps is not None else None,
        "step_reason": analysis.step_reason,
        "language": analysis.language,
        "est_tokens": analysis.est_tokens,
    }


def plan_dict(routed: Plan, fast: QueryAnalysis | None = None, timings: dict[str, float] | None = None
              ) -> dict[str, Any]:
    purposes = purposes_for(len(routed.choices))
    return {
        "domain": routed.domain,
        "analysis": analysis_dict(routed.analysis),
        "fast_analysis": analysis_dict(fast) if fast is not None and fast is not routed.analysis else None,
        "chain": [
            {"stage": number, "step": c.step, "model": c.model, "matrix_model": c.matrix_model,
             "purpose": purpose, "confidence": c.confidence, "via": c.via, "reason": c.reason}
            for number, (c, purpose) in enumerate(zip(routed.choices, purposes, strict=True), 1)
        ],
        "fallbacks": [f._asdict() for f in routed.fallbacks],
        "notes": list(routed.notes),
        "installed": [
            {"name": m.name, "matrix_model": m.spec.id if m.spec else None, "kind": m.kind,
             "params_b": m.params_b, "strengths": sorted(m.strengths), "inferred": m.inferred}
            for m in routed.installed
        ],
        "timings_ms": {k: round(v, 3) for k, v in (timings or {}).items()},
        "energy": None if routed.energy is None else {  # set when an energy profile reshaped the chain
            "profile": routed.energy.profile, "joules": round(routed.energy.joules, 1),
            "full_power_joules": round(routed.energy.full_power_joules, 1),
            "budget_joules": routed.energy.budget_joules and round(routed.energy.budget_joules, 1),
            "max_tokens": routed.energy.max_tokens},
    }
