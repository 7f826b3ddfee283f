"""`mirador rate [ID] SCORE [--note TEXT]`: feedback on an answer (default: the last one).

Exit codes: a score that is not a whole number ("good") is a usage error (2);
a whole number outside 1–5 (0, 6) or an id that does not exist is bad input (1).
The rating lands in history first (every rating is kept, the latest counts),
then in the learner's table the planner reads, then on the pattern in memory;
memory failing costs a warning line, never the rating.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mirador.errors import MiradorError, UsageError

SCORE_HINT = "rate from 1 (bad) to 5 (excellent), e.g. mirador rate 4   or   mirador rate 12 2 --note 'too long'"


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("values", nargs="+", metavar="[ID] SCORE",
                        help="the exchange id (default: the last answer) and a score from 1 to 5")
    parser.add_argument("--note", help="why: kept with the rating")
    parser.add_argument("--json", action="store_true", help="the result as one JSON object")
    parser.set_defaults(run=run_rate)


def parse_score(text: str) -> int:
    try:
        score = int(text.strip())
    except ValueError:
        raise UsageError(f"a score is a whole number from 1 to 5, not '{text}'", hint=SCORE_HINT) from None
    if not 1 <= score <= 5:
        raise MiradorError(f"a score is from 1 to 5, not {score}", hint=SCORE_HINT)
    return score


def parse_id(text: str) -> int:
    try:
        return int(text.strip().lstrip("#"))
    except ValueError:
        raise UsageError(f"an exchange id is a number, not '{text}'",
                         hint="`mirador history` lists the ids") from None


def run_rate(args: argparse.Namespace) -> int:
    from mirador.config import load_settings
    from mirador.history import HistoryStore

    if len(args.values) > 2:
        raise UsageError("rate takes at most an id and a score", hint=SCORE_HINT)
    score = parse_score(args.values[-1])
    wanted = parse_id(args.values[0]) if len(args.values) == 2 else None
    settings = load_settings()
    with HistoryStore.open_default() as history:
        exchange_id = wanted if wanted is not None else history.last_exchange_id()
        if exchange_id is None:
            raise MiradorError("there is no answer to rate yet", hint='ask something first: mirador ask "…"')
        history.add_rating(exchange_id, score, args.note)
        exchange = history.get(exchange_id)
    assert exchange is not None  # add_rating checked it exists
    from mirador.cli.memory import domain_of_for
    from mirador.memory.learner import RatingTable

    domain_of = domain_of_for(settings)
    domain, _ = domain_of(exchange.prompt)
    models = [stage.model for stage in exchange.stages]
    table = RatingTable.load(settings.paths)
    table.record(exchange_id, domain, models, score)
    table.save()
    remembered = _remember(settings, exchange_id, score, args.note, domain_of)
    result = {"id": exchange_id, "score": score, "note": args.note, "domain": domain, "models": models,
              "ratings": len(exchange.ratings), "memory": remembered}
    if args.json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
    else:
        again = f" (rating {len(exchange.ratings)} of this answer; the latest counts)" if len(exchange.ratings) > 1 \
            else ""
        chain = " → ".join(models) or "no model"
        print(f"rated #{exchange_id}: {score}/5 · {domain}: {chain}{again}")
    return 0


def _remember(settings: Any, exchange_id: int, score: int, note: str | None, domain_of: Any) -> bool:
    """Bring the pattern store up to date and put the rating on the pattern; False if memory is off."""
    if not settings.memory_enabled:
        return False
    from mirador.cli.memory import memory_warning
    from mirador.memory.observe import memory_embedder, open_store, sync

    try:
        embedder = memory_embedder(settings)
        store = open_store(settings, embedder)
        sync(settings, domain_of, store=store, embedder=embedder)
        store.set_rating(exchange_id, score, note)
        return True
    except MiradorError as exc:
        memory_warning(exc, "the rating is saved and counts for routing")
        return False
