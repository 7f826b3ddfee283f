"""What the predictor learns from: the user's questions in history.db, and the models each used,
and the choice of what to warm from its probabilities."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError
from mirador.predict.predictor import Use

# A month of heavy use; older questions have faded to nothing anyway (half-life: a week).
MAX_QUESTIONS = 5000


def uses_from_history(db_path: Path, limit: int = MAX_QUESTIONS) -> list[Use]:
    """Every question's time and models, oldest first; [] without a history (read-only: no migration)."""
    if not db_path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []
    try:
        rows = conn.execute(
            "SELECT e.id, e.created_at, group_concat(s.model, char(31)) FROM exchanges e "
            "JOIN stages s ON s.exchange_id = e.id GROUP BY e.id ORDER BY e.created_at DESC LIMIT ?",
            (limit,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [Use(float(at), tuple(dict.fromkeys(models.split("\x1f"))), key=int(key))
            for key, at, models in reversed(rows) if models]


def with_memory(settings: Any, uses: list[Use]) -> list[Use]:
    """The uses with their questions' embeddings and latest ratings from pattern memory (ChromaDB:
    imported here, off `ask`'s path); unchanged when memory is off, absent or unreadable."""
    if not uses or not getattr(settings, "memory_enabled", False):
        return uses
    from mirador.memory.patterns import exists

    if not exists(settings):
        return uses
    try:
        from mirador.memory.observe import memory_embedder
        from mirador.memory.patterns import PatternStore

        store = PatternStore.open(settings, memory_embedder(settings).name, create=False)
        found = store.vectors([u.key for u in uses])
    except (MiradorError, ImportError, OSError):
        return uses  # the usage evidence alone still predicts
    return [replace(u, vector=found[u.key][0], rating=found[u.key][1]) if u.key in found else u for u in uses]


def choose_warm(probabilities: dict[str, float], threshold: float, max_loaded: int) -> list[str]:
    """The models worth loading now: above the threshold, most likely first, as many as the server keeps."""
    likely = sorted((p, m) for m, p in probabilities.items() if p >= threshold)
    return [m for _, m in reversed(likely)][:max(0, max_loaded)]
