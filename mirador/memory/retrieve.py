"""Retrieval for the context compiler: similar, well-rated past exchanges as examples and facts.

Runs in the compile step, beside stage 1 and after its first token (stream/chain.py),
so ChromaDB's import and the query's embedding serve stages 2..n only.
"""

from __future__ import annotations

from typing import Any

from mirador.memory.learner import WELL_RATED

TOP_K = 3
MIN_SIMILARITY = 0.45  # below this a "similar" question is about something else
EXAMPLE_CHARS = 800  # of the answer: an example shows the shape that was liked, not all of it


def examples_for(settings: Any, query: str, k: int = TOP_K) -> tuple[list[str], list[str]]:
    """(facts, examples): the user's notes on liked answers, and those question/answer pairs."""
    from mirador.history import HistoryStore
    from mirador.memory.observe import similar

    hits = [h for h in similar(settings, query, k, min_rating=WELL_RATED) if h.similarity >= MIN_SIMILARITY]
    if not hits:
        return [], []
    facts: list[str] = []
    examples: list[str] = []
    with HistoryStore(settings.paths.history_db) as history:
        for hit in hits:
            exchange = history.get(hit.pattern.exchange_id)
            if exchange is None or not exchange.final_text:
                continue  # forgotten from history since it was observed
            answer = exchange.final_text.strip()
            if len(answer) > EXAMPLE_CHARS:
                answer = answer[:EXAMPLE_CHARS].rstrip() + " …"
            examples.append(f"A past question the user rated {exchange.rating}/5: {exchange.prompt.strip()[:400]}\n"
                            f"The answer they liked: {answer}")
            note = exchange.ratings[-1].note if exchange.ratings else None
            if note:
                facts.append(f"The user said of a liked answer to a similar question: {note.strip()[:300]}")
    return facts, examples
