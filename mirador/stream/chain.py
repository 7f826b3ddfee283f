"""The chain executor: stages answer one after another, each building on the last.

A small fast model acknowledges at once, larger ones analyse and synthesise;
each stage sees the question plus the earlier stages' text. A failing stage is
reported as an event and the chain goes on, unless the server itself is gone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from mirador.errors import MiradorError, RuntimeUnavailable
from mirador.runtime.client import KeepAlive, OllamaClient
from mirador.stream.events import (
    Stage,
    StageFailed,
    StageFinished,
    StageStarted,
    StageStats,
    StreamEvent,
    TokenEvent,
)

# What each purpose asks of its model. A single-stage chain ("answer") adds
# nothing, so `mirador ask -m M` sends exactly what `ollama run M` would.
PURPOSE_INSTRUCTIONS: dict[str, str] = {
    "answer": "",
    "quick_ack": (
        "Reply at once with a short, direct answer of one or two sentences. "
        "A more thorough answer will follow from another model."
    ),
    "core_analysis": (
        "Analyse the question carefully and answer it fully. Earlier drafts are given for reference: "
        "keep what is right, correct what is wrong."
    ),
    "deep_synthesis": (
        "Write the final, complete answer. Build on the earlier drafts, fix their mistakes and fill "
        "their gaps. Do not mention the drafts."
    ),
}

# The acknowledgment stays brief whatever the user's options say.
QUICK_ACK_MAX_TOKENS = 96


def chain_purposes(length: int) -> list[str]:
    if length == 1:
        return ["answer"]
    return ["quick_ack"] + ["core_analysis"] * (length - 2) + ["deep_synthesis"]


def chain_confidences(length: int) -> list[float]:
    """Prior trust in each stage, rising along the chain, until routing supplies real ones."""
    if length == 1:
        return [0.8]
    return [round(0.5 + 0.4 * i / (length - 1), 2) for i in range(length)]


def stages_for(models: list[str]) -> list[Stage]:
    purposes = chain_purposes(len(models))
    confidences = chain_confidences(len(models))
    return [
        Stage(model, purpose, confidence, QUICK_ACK_MAX_TOKENS if purpose == "quick_ack" else None)
        for model, purpose, confidence in zip(models, purposes, confidences, strict=True)
    ]


@dataclass
class ChainRequest:
    query: str
    stages: list[Stage]
    keep_alive: Callable[[str], KeepAlive]
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # earlier turns of the conversation
    options: dict[str, Any] = field(default_factory=dict)
    # The user's DNA: stage -> (system fragment, options); explicit options override its options.
    shape: Callable[[Stage], tuple[str, dict[str, Any]]] | None = None
    # Compiles the context (distilled history, facts, constraints) for stages 2..n. It runs in a
    # thread beside stage 1 and replaces the raw history there; stage 1 never waits for it.
    context: Callable[[], str] | None = None
    # The running compile, once run_chain started it: the prefix warm-up (predict/prefill.py) reads it.
    compiled: asyncio.Future[str] | None = field(default=None, repr=False, compare=False)


def _shape(request: ChainRequest, stage: Stage) -> tuple[str, dict[str, Any]]:
    return request.shape(stage) if request.shape is not None else ("", {})


def stage_messages(request: ChainRequest, stage: Stage, earlier: list[tuple[Stage, str]],
                   context: str | None = None) -> list[dict[str, str]]:
    """`context`, when compiled, stands in for the raw history (stages 2..n)."""
    parts = (request.system, PURPOSE_INSTRUCTIONS[stage.purpose], _shape(request, stage)[0], context)
    system = "\n\n".join(part for part in parts if part)
    messages = [{"role": "system", "content": system}] if system else []
    if context is None:
        messages += request.history
    content = request.query
    drafts = [(s, text) for s, text in earlier if text.strip()]
    if drafts:
        content += "\n\n---\nEarlier drafts of the answer:\n" + "\n\n".join(
            f"[draft {n} by {s.model}]\n{text.strip()}" for n, (s, text) in enumerate(drafts, 1)
        )
    messages.append({"role": "user", "content": content})
    return messages


def stage_options(request: ChainRequest, stage: Stage) -> dict[str, Any]:
    options = {**_shape(request, stage)[1], **request.options, **stage.options}
    if stage.max_tokens is not None:
        current = options.get("num_predict")
        if not isinstance(current, int) or current < 0 or current > stage.max_tokens:
            options["num_predict"] = stage.max_tokens
    return options


async def _compiled(task: asyncio.Future[str] | None) -> str | None:
    """The compiled context, or None (raw history instead) when there is none or it failed."""
    if task is None:
        return None
    try:
        return await task
    except Exception:  # a failed compile must not cost the user the answer: fall back to raw history
        return None


async def run_chain(client: OllamaClient, request: ChainRequest) -> AsyncIterator[StreamEvent]:
    earlier: list[tuple[Stage, str]] = []
    total = len(request.stages)
    context_task: asyncio.Future[str] | None = None

    def start_context() -> None:
        # Started once stage 1's first token is out (or stage 1 ended), so that the compiler's
        # imports and embeddings never compete with the first token for the interpreter.
        nonlocal context_task
        if context_task is None and request.context is not None and total > 1:
            context_task = asyncio.ensure_future(asyncio.to_thread(request.context))
            request.compiled = context_task
            # A chain that ends before stage 2 never awaits it: retrieve its error so none is logged.
            context_task.add_done_callback(lambda task: task.cancelled() or task.exception())

    for number, stage in enumerate(request.stages, 1):
        yield StageStarted(number, total, stage.model, stage.purpose, stage.confidence)
        if number > 1:
            start_context()
        context = await _compiled(context_task) if number > 1 else None
        parts: list[str] = []
        ttft_ms: float | None = None
        final: dict[str, Any] = {}
        started = time.perf_counter()
        try:
            stream = client.chat(
                stage.model,
                stage_messages(request, stage, earlier, context),
                keep_alive=request.keep_alive(stage.model),
                options=stage_options(request, stage),
            )
            async for chunk in stream:
                token = (chunk.get("message") or {}).get("content") or ""
                if token:
                    if ttft_ms is None:
                        ttft_ms = (time.perf_counter() - started) * 1000
                        start_context()
                    parts.append(token)
                    yield TokenEvent(number, stage.model, token, stage.confidence)
                if chunk.get("done"):
                    final = chunk
        except MiradorError as exc:
            yield StageFailed(number, stage.model, "".join(parts), exc.message, exc.hint, exc.exit_code)
            if isinstance(exc, RuntimeUnavailable):
                return  # the server is gone: the later stages would only fail the same way
            continue
        text = "".join(parts)
        total_ms = (time.perf_counter() - started) * 1000
        yield StageFinished(number, stage.model, text, StageStats.from_final_chunk(final, ttft_ms, total_ms))
        earlier.append((stage, text))
