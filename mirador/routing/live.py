"""Routing inside `mirador ask`: stage 1 from the fast path at once, stages 2..n refined in parallel.

DESIGN.md, "How a question flows": the first stage never waits for anything
slow. The quick plan needs the matrix (compiled cache, ~1 ms), the fast
classifier (well under 1 ms) and /api/tags (one local round trip). When the
fast path is unsure, the query's embedding is computed while stage 1 streams,
and stages 2..n are re-planned from it before stage 2 starts; the number of
stages never changes mid-stream, so the stage counter the user sees stays true.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mirador.errors import MiradorError

if TYPE_CHECKING:  # imported for real in first_stages, while /api/tags is on its way
    from mirador.routing.classify import QueryAnalysis
    from mirador.routing.interpret import Interpretation
    from mirador.routing.planner import Plan, PlanConstraints
    from mirador.routing.schema import CapabilityMatrix

# Above this fast-path confidence the refined path is not worth an embedding.
REFINE_BELOW = 0.85
# Once stage 1 is done, how long stage 2 may wait for the refined plan before going with the quick one.
REFINE_WAIT_S = 1.5
# The longest the refinement waits for the context compiler's thread before starting anyway.
CONTEXT_WAIT_S = 5.0
# While speculating nothing is shown until the refined decision: past this, the fast path's choice wins.
DECIDE_WAIT_S = 3.0


def to_stages(matrix: CapabilityMatrix, routed: Plan, purposes: list[str] | None = None) -> list[Any]:
    """The plan as the chain executor's stages; purposes follow position, as for --chain."""
    from mirador.stream.chain import QUICK_ACK_MAX_TOKENS, chain_purposes
    from mirador.stream.events import Stage

    steps = {step.name: step for step in matrix.domains[routed.domain].chain}
    purposes = purposes or chain_purposes(len(routed.choices))
    stages = []
    cap = routed.energy.max_tokens if routed.energy is not None else None  # survival: short answers
    for choice, purpose in zip(routed.choices, purposes, strict=True):
        limit = steps[choice.step].max_tokens
        if limit is None and purpose == "quick_ack":
            limit = QUICK_ACK_MAX_TOKENS
        if cap is not None:
            limit = min(limit or cap, cap)
        stages.append(Stage(choice.model, purpose, choice.confidence, limit))
    return stages


def embedder_for(settings: Any, client: Any) -> Any | None:
    """The embedder memory uses (setting `memory_embedder`: local, or ollama[:MODEL]); None when unavailable.

    One embedder for both, so the example vectors and the pattern store agree on what a vector means.
    """
    values = getattr(settings, "values", {}) or {}
    choice = str(values.get("memory_embedder") or "local").strip()
    if choice.lower() in ("none", "off", "false", "no"):
        return None
    try:
        from mirador.memory.embed import get_embedder
    except ImportError:
        return None
    provider, _, model = choice.partition(":")
    try:
        if provider.lower() == "ollama":
            return get_embedder("ollama", model or None, client=client)
        return get_embedder(provider.lower() or "local")
    except MiradorError:
        return None


class LiveRouter:
    def __init__(self, settings: Any, query: str,
                 constraints: PlanConstraints | Callable[[], PlanConstraints] | None = None):
        """`constraints` may be a function: it then runs while /api/tags is on its way (it may read sensors)."""
        self.settings = settings
        self.query = query
        self._constraints = constraints
        self.constraints: PlanConstraints | None = None
        self.matrix: CapabilityMatrix | None = None
        self.quick: Plan | None = None
        self.refined: Plan | None = None
        self._refine_with: Any = None  # the client, while a refinement is wanted and not yet started
        self._context_done: threading.Event | None = None
        self._task: asyncio.Task[Plan | None] | None = None
        self.analysis: QueryAnalysis | None = None  # the fast path's
        self._interpretations: list[Interpretation] | None = None

    async def first_stages(self, client: Any) -> list[Any]:
        from mirador.routing.installed import fetch_tags, installed_models

        # The first request of the command waits on connection set-up and the server; the
        # imports, the matrix, the classification and the constraints happen in that wait.
        tags = asyncio.ensure_future(fetch_tags(client))
        try:
            await asyncio.sleep(0)
            from mirador.routing.classify import classify_fast
            from mirador.routing.matrix import load_matrix
            from mirador.routing.planner import PlanConstraints, plan

            self.matrix = load_matrix(self.settings.paths)
            await asyncio.sleep(0)
            analysis = classify_fast(self.query, self.matrix)
            await asyncio.sleep(0)
            given = self._constraints() if callable(self._constraints) else self._constraints
            self.constraints = given or PlanConstraints()
            fetched = await tags
        except BaseException:
            tags.cancel()
            with contextlib.suppress(BaseException):
                await tags
            raise
        self.analysis = analysis
        self.quick = plan(analysis, self.matrix, installed_models(self.matrix, fetched), self.constraints)
        self._refine_with = client if len(self.quick.choices) > 1 and self._worth_refining(analysis) else None
        return to_stages(self.matrix, self.quick)

    @staticmethod
    def _worth_refining(analysis: QueryAnalysis) -> bool:
        return analysis.fell_back or analysis.confidence < REFINE_BELOW

    # -- the top interpretations, for speculative first stages (mirador.predict.speculative) ----------

    @property
    def margin(self) -> float:
        """Normalised margin between the fast path's two most probable domains (1.0 before planning)."""
        from mirador.routing.interpret import top_margin

        return top_margin(self.analysis.scores) if self.analysis is not None else 1.0

    def interpretations(self) -> list[Interpretation]:
        """The routed plan first, then the next most probable domains' plans (computed once, on demand)."""
        if self._interpretations is None:
            from mirador.routing.interpret import interpretations

            if self.analysis is None or self.matrix is None or self.quick is None:
                return []
            self._interpretations = interpretations(self.query, self.analysis, self.matrix, self.quick.installed,
                                                    self.constraints, self.quick)
        return self._interpretations

    def decides_quickly(self, client: Any) -> bool:
        """Whether a refined decision can come quickly: an embedder, and its example vectors cached."""
        embedder = embedder_for(self.settings, client)
        if embedder is None or self.matrix is None:
            return False
        from mirador.routing.classify_embed import bank_cached

        return bank_cached(embedder.name, self.matrix, self.settings.paths)

    async def decide(self, client: Any, among: list[Interpretation]) -> tuple[Interpretation, str]:
        """The refined decision among speculated interpretations: (winner, what decided it). The
        embedding classifier's domain if it is one of them, else the one it scores highest; the
        routed (first) one when the embedding is unavailable or slower than DECIDE_WAIT_S."""
        try:
            analysis = await asyncio.wait_for(self._refined_analysis(client, wait_for_context=False), DECIDE_WAIT_S)
        except TimeoutError:
            return among[0], f"fast path (the refined decision took over {DECIDE_WAIT_S:g} s)"
        if analysis is None:
            return among[0], "fast path (no embedding available)"
        ranked = sorted(among, key=lambda i: (i.domain != analysis.domain, -analysis.scores.get(i.domain, 0.0)))
        return ranked[0], analysis.path

    def adopt(self, winner: Interpretation) -> list[Any]:
        """The speculation chose `winner`: its plan is the chain now, and it was refined already."""
        assert self.matrix is not None
        self.quick = winner.plan
        self._refine_with = None
        return to_stages(self.matrix, winner.plan)

    async def _refined_analysis(self, client: Any, wait_for_context: bool = True) -> QueryAnalysis | None:
        if self.matrix is None:
            return None
        embedder = embedder_for(self.settings, client)
        if embedder is None:
            return None
        try:
            # Imports and weights load in a thread: on the loop they would stall stage 1's stream.
            # After the context compiler's thread, never beside it: two threads importing numpy at
            # once can leave one of them with a half-initialised module.
            if wait_for_context:
                await _until(self._context_done, CONTEXT_WAIT_S)
            await asyncio.to_thread(_warm, embedder)
            from mirador.routing.classify_embed import classify_refined

            return await classify_refined(self.query, self.matrix, embedder, self.settings.paths)
        except (MiradorError, ImportError, OSError, ValueError):
            return None  # the quick plan stands; routing must never cost the answer

    async def _refine(self, client: Any) -> Plan | None:
        from mirador.routing.planner import plan

        if self.matrix is None or self.quick is None or self.constraints is None:
            return None
        analysis = await self._refined_analysis(client)
        if analysis is None or analysis.domain == self.quick.domain:
            return None
        first = self.quick.choices[0].model
        reserved = self.constraints.reserved | {first}
        try:
            return plan(analysis, self.matrix, self.quick.installed, self.constraints._replace(reserved=reserved),
                        skip_first_step=True)
        except MiradorError:
            return None

    def serial_with(self, compile_context: Callable[[], str] | None) -> Callable[[], str] | None:
        """Wrap the context compiler (run in a thread beside stage 1) so the refinement waits for it."""
        if compile_context is None:
            return None
        done = self._context_done = threading.Event()

        def compile_then_signal() -> str:
            try:
                return compile_context()
            finally:
                done.set()

        return compile_then_signal

    async def on_event(self, event: Any, stages: list[Any]) -> None:
        """Call after each event of the chain: refines stages 2..n while stage 1 streams.

        The refinement starts at stage 1's first token, not before: importing numpy
        and running the embedder in a thread beside the first request would take
        the interpreter from the code waiting for that token.
        """
        from mirador.stream.events import StageFailed, StageFinished, TokenEvent

        if self._refine_with is None or getattr(event, "stage", None) != 1:
            return
        if self._task is None and isinstance(event, (TokenEvent, StageFinished, StageFailed)):
            self._task = asyncio.create_task(self._refine(self._refine_with))
        if not isinstance(event, (StageFinished, StageFailed)):
            return
        task, self._refine_with = self._task, None
        if task is None:
            return
        try:
            refined = await asyncio.wait_for(asyncio.shield(task), REFINE_WAIT_S)
        except TimeoutError:
            task.cancel()
            return
        if refined is None or not refined.choices or self.matrix is None:
            return
        self.refined = refined
        need = len(stages) - 1
        choices = refined.choices
        if len(choices) >= need:
            choices = choices[len(choices) - need:]  # keep the analysis and synthesis steps
        kept = stages[1:1 + need - len(choices)]  # a shorter refined chain keeps the quick plan's middle
        purposes = [s.purpose for s in stages[1 + len(kept):]]
        stages[1 + len(kept):] = to_stages(self.matrix, refined._replace(choices=choices), purposes)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    def summary(self) -> str:
        """One line for the terminal: where the question went and how to see why."""
        if self.quick is None:
            return ""
        models = " → ".join(c.model for c in self.quick.choices)
        a = self.quick.analysis
        label = f"{a.domain} ({a.confidence:.2f})" if not a.fell_back else f"{a.domain} (unsure)"
        energy = f" · {self.quick.energy.profile} profile" if self.quick.energy is not None else ""
        return f"routed as {label}: {models}{energy} · `mirador route --explain` says why"


def _warm(embedder: Any) -> None:
    import numpy  # noqa: F401

    import mirador.routing.classify_embed  # noqa: F401

    load = getattr(embedder, "load", None)
    if callable(load):
        load()


async def _until(event: threading.Event | None, timeout: float) -> None:
    """Wait for a thread's event without a thread of our own: cancellable, and nothing left at exit."""
    waited = 0.0
    while event is not None and not event.is_set() and waited < timeout:
        await asyncio.sleep(0.01)
        waited += 0.01
