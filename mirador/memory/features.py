"""What a pattern records about its query beyond the words: length, code, question type, language.

Cheap on purpose (a few regexes and the routing's fast classifier): every
observed exchange pays for it.
"""

from __future__ import annotations

import re
from typing import Any

# The embedder sees at most this many characters: all-MiniLM-L6-v2 reads 256 tokens
# (about 1,000 characters of English), and tokenizing 100,000 characters only to cut them costs time.
EMBED_CHARS = 2000
# The document kept in the store; the whole query stays in history.db.
DOCUMENT_CHARS = 8000

_CODE = re.compile(r"```|^\s*(def |class |import |from \S+ import |#include|fn |func |public |SELECT )|"
                   r"[;{}]\s*$|=>|\w+\(.*\)\s*[:{]", re.MULTILINE)
_QUESTION_TYPES = (
    ("how", re.compile(r"^\s*how\b", re.I)),
    ("why", re.compile(r"^\s*why\b", re.I)),
    ("what", re.compile(r"^\s*(what|which|who|when|where)\b", re.I)),
    ("fix", re.compile(r"\b(fix|debug|error|crash|bug|exception|traceback)\b", re.I)),
    ("write", re.compile(r"^\s*(write|draft|compose|create|generate|make)\b", re.I)),
    ("summarize", re.compile(r"\b(summari[sz]e|tl;?dr|sum up)\b", re.I)),
    ("translate", re.compile(r"\btranslat", re.I)),
    ("explain", re.compile(r"^\s*(explain|describe|tell me)\b", re.I)),
)


def question_type(query: str) -> str:
    for name, pattern in _QUESTION_TYPES:
        if pattern.search(query[:500]):
            return name
    return "question" if query.rstrip().endswith("?") else "other"


def text_for_embedding(query: str) -> tuple[str, bool]:
    """The part of the query the embedder reads, and whether it was cut."""
    return (query[:EMBED_CHARS], True) if len(query) > EMBED_CHARS else (query, False)


def features(query: str, language: str, embedder_truncated: bool = False) -> dict[str, Any]:
    _, cut = text_for_embedding(query)
    return {
        "length": len(query),
        "has_code": bool(_CODE.search(query[:20000])),
        "question_type": question_type(query),
        "language": language or "unknown",
        # Either we cut the text before the embedder, or the embedder cut it to its token limit.
        "truncated_for_embedding": bool(cut or embedder_truncated),
        "embedded_chars": min(len(query), EMBED_CHARS),
        "document_truncated": len(query) > DOCUMENT_CHARS,
    }
