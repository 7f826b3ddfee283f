"""Cheap necessary conditions for the matrix's regular expressions.

Compiling the matrix's patterns costs about 2.5 ms per process, on the path to
the first token. Most never match a given query, so each gets a guard when the
matrix is validated (and cached with it): a few literal strings of which every
match must contain at least one. A pattern is compiled and run only when one
of them occurs in the lower-cased query.

The guard comes from the pattern's parse tree. If anything about the pattern
is beyond this analysis (back-references, look-arounds, a future `re`
internals change), the guard is None and the pattern always runs: a guard may
only ever skip work, never change a result.
"""

from __future__ import annotations

import re
from typing import Any

Guard = tuple[str, ...] | None
MAX_CLASS_CHARS = 12


def guard_for(pattern: str) -> Guard:
    """Literals (lower case) of which any match of `pattern` (case-insensitive) contains one, or None."""
    try:
        from re import _parser as parser  # CPython's own pattern parser, 3.11+
        from re._constants import (
            ATOMIC_GROUP,
            BRANCH,
            IN,
            LITERAL,
            MAX_REPEAT,
            MIN_REPEAT,
            POSSESSIVE_REPEAT,
            SUBPATTERN,
        )

        ops = {"LITERAL": LITERAL, "IN": IN, "BRANCH": BRANCH, "SUBPATTERN": SUBPATTERN,
               "REPEAT": (MAX_REPEAT, MIN_REPEAT, POSSESSIVE_REPEAT), "ATOMIC": ATOMIC_GROUP}
        found = _sequence(list(parser.parse(pattern, re.IGNORECASE)), ops)
    except Exception:  # noqa: BLE001 - an unanalysable pattern simply always runs
        return None
    if not found or any(not literal for literal in found):
        return None
    return tuple(sorted(found))


def passes(guard: Guard, lowered_text: str) -> bool:
    return guard is None or any(literal in lowered_text for literal in guard)


def _sequence(items: list[tuple[Any, Any]], ops: dict[str, Any]) -> set[str] | None:
    """The most selective requirement among the items of a sequence (each one must match)."""
    candidates: list[set[str]] = []
    run = ""
    for op, value in items:
        if op == ops["LITERAL"]:
            run += chr(value).lower()
            continue
        if run:
            candidates.append({run})
            run = ""
        required = _item(op, value, ops)
        if required:
            candidates.append(required)
    if run:
        candidates.append({run})
    if not candidates:
        return None
    # Longer literals are rarer in text; among equals, fewer alternatives.
    return max(candidates, key=lambda c: (min(len(s) for s in c), -len(c)))


def _item(op: Any, value: Any, ops: dict[str, Any]) -> set[str] | None:
    if op == ops["IN"]:
        chars = set()
        for kind, char in value:
            if kind != ops["LITERAL"]:
                return None  # a range, a category, a negation: too broad to require
            chars.add(chr(char).lower())
        return chars if 0 < len(chars) <= MAX_CLASS_CHARS else None
    if op == ops["SUBPATTERN"]:
        return _sequence(list(value[-1]), ops)
    if op == ops["ATOMIC"]:
        return _sequence(list(value), ops)
    if op in ops["REPEAT"]:
        low, _, body = value
        return _sequence(list(body), ops) if low >= 1 else None
    if op == ops["BRANCH"]:
        union: set[str] = set()
        for alternative in value[1]:
            required = _sequence(list(alternative), ops)
            if not required:
                return None  # one alternative can match without any literal
            union |= required
        return union
    return None
