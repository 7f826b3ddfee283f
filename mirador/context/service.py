"""The context compiler as `ask` and `mirador context` use it: inputs from settings, DNA and history.

`compiler_for_chain` returns the callable a ChainRequest runs in a thread beside
stage 1; nothing here imports numpy, tokenizers or the embedder until that
callable runs, so building it costs `ask` nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mirador.context.compiler import CompiledContext, ContextInputs, compile_context
from mirador.context.tokens import EstimatingCounter, counter_for
from mirador.errors import UsageError

# The purpose whose DNA fragment the compiled context is budgeted for: stages 2..n.
CONTEXT_PURPOSE = "deep_synthesis"
VECTOR_CACHE = "context_vectors.db"


def dna_fragment(dna: Any) -> str:
    if dna is None:
        return ""
    from mirador.dna.apply import fragment

    return fragment(dna, CONTEXT_PURPOSE)


def memory_inputs(query: str, settings: Any = None) -> tuple[list[str], list[str]]:
    """Remembered facts and well-rated examples from pattern memory (mirador.memory.retrieve).

    Memory that cannot be read (a corrupt store, a server that is down) switches itself off for
    this call with one warning line: it never costs the answer.
    """
    if settings is None or not getattr(settings, "memory_enabled", False):
        return [], []
    from mirador.memory.learner import has_well_rated

    if not has_well_rated(settings.paths):
        return [], []  # nothing rated 4-5 yet: no example to find, and no chromadb import to pay
    from mirador.errors import MiradorError
    from mirador.memory.retrieve import examples_for

    try:
        return examples_for(settings, query)
    except MiradorError as exc:
        import sys

        print(f"mirador: warning: memory is off for this answer: {exc.message}"
              + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return [], []


def make_inputs(query: str, history: list[dict[str, str]], dna: Any, settings: Any, *,
                with_memory: bool = True) -> ContextInputs:
    facts, examples = memory_inputs(query, settings) if with_memory else ([], [])
    return ContextInputs(query=query, history=list(history), dna_fragment=dna_fragment(dna),
                         constraints=list(getattr(settings, "constraints", []) or []), facts=facts,
                         examples=examples)


def summariser_for(settings: Any, model: str | None = None) -> Callable[[list[dict[str, str]]], list[str]] | None:
    chosen = model if model is not None else getattr(settings, "context_summariser", "")
    if not chosen:
        return None
    from mirador.context.summarise import summariser

    return summariser(chosen, settings.host, connect_timeout=settings.connect_timeout)


def check_budget(inputs: ContextInputs, budget: int) -> None:
    """Fail before anything streams when the budget cannot even hold the DNA and constraints.

    The estimator over-counts, so passing here guarantees the compile will pass too.
    """
    counter = EstimatingCounter()
    fixed = counter.count(inputs.dna_fragment) + counter.count("\n".join(inputs.constraints))
    if fixed > budget:
        compile_context(ContextInputs(inputs.query, [], inputs.dna_fragment, inputs.constraints),
                        budget=budget, counter=counter, embedder=None)  # raises the full error
    if budget < 1:
        raise UsageError(f"a context budget must be a positive number of tokens, not {budget}")


def compile_now(inputs: ContextInputs, settings: Any, *, budget: int, model: str | None,
                embedder: Any = None, summarise_with: str | None = None,
                tokenizer_file: Any = None) -> CompiledContext:
    from mirador.context.embedding import default_embedder
    from mirador.context.vectors import CachedEmbedder

    if embedder is None:
        # The history's sentences were embedded on the previous question: reuse their vectors.
        embedder = CachedEmbedder(default_embedder(), settings.paths.ensure_data_dir() / VECTOR_CACHE)
    try:
        return compile_context(inputs, budget=budget, counter=counter_for(model, tokenizer_file),
                               embedder=embedder, summariser=summariser_for(settings, summarise_with))
    finally:
        if isinstance(embedder, CachedEmbedder):
            embedder.close()


def compiler_for_chain(query: str, history: list[dict[str, str]], dna: Any, settings: Any,
                       models: list[str]) -> Callable[[], str] | None:
    """The compile step of a chain, or None when a chain has nothing to compile for its later stages."""
    if len(models) < 2:
        return None
    # Memory is read inside the compile step (beside stage 1), never here on the way to it.
    inputs = make_inputs(query, history, dna, settings, with_memory=False)
    memory = bool(getattr(settings, "memory_enabled", False))
    if not (inputs.history or inputs.constraints or memory):
        return None
    budget = int(getattr(settings, "context_budget", 2048))
    check_budget(inputs, budget)

    def compile_for_stages() -> str:
        ready = inputs
        if memory:
            facts, examples = memory_inputs(query, settings)
            ready = replace(inputs, facts=facts, examples=examples)
        if not (ready.history or ready.constraints or ready.facts or ready.examples):
            return ""
        return compile_now(ready, settings, budget=budget, model=models[-1]).text()

    return compile_for_stages
