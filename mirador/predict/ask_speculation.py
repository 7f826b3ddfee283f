"""Speculation inside `mirador ask`: the router's close interpretations start together, the refined
decision keeps one, and the chain executor goes on with the winner's plan.

Only reached when the fast path's margin is small: a clear query never imports
this module. Nothing is rendered before the decision, so the user never sees
an interpretation that then vanishes; what the speculation saves is the
winner's load and prompt reading, which ran while the decision was made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mirador.predict.speculative import DEFAULT_MARGIN, AdoptingClient, Candidate, Speculation, speculation_blocker


class AskSpeculation:
    def __init__(self, speculation: Speculation, interpretations: list[Any], margin: float):
        self.speculation = speculation
        self.interpretations = interpretations
        self.margin = margin
        self.client: AdoptingClient | None = None
        self.decided_by: str | None = None
        self.winner_model: str | None = None

    async def aclose(self) -> None:
        await self.speculation.aclose()

    def first_stage_timing(self) -> tuple[float | None, float]:
        """(time to first token, time before the executor adopted the stream), in ms, of the winner."""
        runner = self.speculation.winner
        if runner is None:
            return None, 0.0
        ttft = (runner.first_at - runner.sent_at) * 1000 if runner.first_at is not None else None
        adopted = self.client.adopted_at if self.client is not None else None
        return ttft, ((adopted - runner.sent_at) * 1000 if adopted is not None else 0.0)

    def record(self, settings: Any) -> Any:
        """The history row: candidates, winner, and what the losers cost (tokens, time, joules)."""
        from mirador.history import SpeculationCandidate, SpeculationRecord

        cost = self.speculation.cost
        by_model = {i.first_model: i for i in self.interpretations}
        candidates = []
        for model, runner in self.speculation.runners.items():
            interpretation = by_model.get(model)
            candidates.append(SpeculationCandidate(
                model, interpretation.domain if interpretation else None,
                interpretation.probability if interpretation else None, runner.tokens,
                self.speculation.outcomes.get(model, "cancelled")))
        return SpeculationRecord(
            candidates=candidates, winner=self.winner_model or "", margin=self.margin, decided_by=self.decided_by,
            decide_ms=None if cost.decide_s is None else round(cost.decide_s * 1000, 1),
            wasted_tokens=cost.wasted_tokens, wasted_seconds=round(cost.wasted_seconds, 3),
            wasted_energy_j=self._wasted_joules(settings))

    def _wasted_joules(self, settings: Any) -> float | None:
        """Each loser's tokens (and its prompt, read once) at its model's J/token (mirador.energy.costs)."""
        try:
            from mirador.energy.costs import CostModel

            costs = CostModel.load(settings=settings)
            total = 0.0
            for model, runner in self.speculation.runners.items():
                if runner is self.speculation.winner:
                    continue
                prompt_tokens = sum(len(str(m.get("content") or "")) for m in runner.candidate.messages) / 4
                total += costs.joules(model, runner.tokens, prompt_tokens)
            return round(total, 3)
        except Exception:  # noqa: BLE001 - an estimate must never cost the answer its history row
            return None


def choose(margin: float, interpretations: Callable[[], list[Any]], settings: Any, profile: str | None,
           enabled: bool = True) -> tuple[list[Any], str | None]:
    """(the interpretations to start together, why not: None to go ahead), for `ask` and `route
    --explain` alike. `interpretations` is only called when the margin is small."""
    if not enabled:
        return [], "speculation is off (--no-speculate or the `speculate` setting)"
    threshold = float(getattr(settings, "speculate_margin", DEFAULT_MARGIN))
    if margin >= threshold:  # the common case: decided without planning other interpretations
        return [], f"the margin {margin:.2f} is not below {threshold:.2f}: the router is sure enough"
    from mirador.routing.interpret import speculation_set

    chosen = speculation_set(interpretations(), threshold)
    if len(chosen) < 2:
        return chosen, "the close interpretations start on the same model: one stream serves them"
    return chosen, speculation_blocker(margin, settings, profile)


async def start(client: Any, request: Any, router: Any, settings: Any, profile: str | None) -> AskSpeculation | None:
    """Speculate when it pays: sets request.stages to the winner's plan and returns the speculation,
    whose `client` the chain executor must use. None: no speculation, nothing changed."""
    chosen, why_not = choose(router.margin, router.interpretations, settings, profile)
    if why_not is not None or not router.decides_quickly(client):
        # Nothing is shown until the decision: without cached example vectors it would take seconds
        # (the first time only; `mirador route` or the refinement of stages 2..n caches them).
        return None
    from mirador.routing.live import to_stages
    from mirador.stream.chain import stage_messages, stage_options

    candidates = []
    for interpretation in chosen:
        stage = to_stages(router.matrix, interpretation.plan)[0]
        candidates.append(Candidate(stage.model, stage_messages(request, stage, [], None),
                                    stage_options(request, stage), request.keep_alive(stage.model)))
    spec = AskSpeculation(Speculation(client, candidates), chosen, router.margin)
    try:
        winner, spec.decided_by = await router.decide(client, chosen)
        spec.winner_model = winner.first_model
        runner = await spec.speculation.settle(winner.first_model)
    except BaseException:
        await spec.aclose()
        raise
    request.stages = router.adopt(winner)
    spec.client = AdoptingClient(client, runner)
    return spec


def summary(spec: AskSpeculation) -> str:
    others = [i.domain for i in spec.interpretations if i.first_model != spec.winner_model]
    cost = spec.speculation.cost
    return (f"speculated on {len(spec.interpretations)} interpretations; {spec.decided_by or 'the router'} "
            f"chose {spec.winner_model} over {', '.join(others)} ({cost.wasted_tokens} tokens wasted, "
            f"decided in {(cost.decide_s or 0) * 1000:.0f} ms)")

