"""What the predictor learns from: the user's questions in history.db, and the models each used,
and the choice of what to warm from its probabilities."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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
            "SELECT e.created_at, group_concat(s.model, char(31)) FROM exchanges e "
            "JOIN stages s ON s.exchange_id = e.id GROUP BY e.id ORDER BY e.created_at DESC LIMIT ?",
            (limit,)).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [Use(float(at), tuple(dict.fromkeys(models.split("\x1f")))) for at, models in reversed(rows) if models]


def choose_warm(probabilities: dict[str, float], threshold: float, max_loaded: int) -> list[str]:
    """The models worth loading now: above the threshold, most likely first, as many as the server keeps."""
    likely = sorted((p, m) for m, p in probabilities.items() if p >= threshold)
    return [m for _, m in reversed(likely)][:max(0, max_loaded)]
