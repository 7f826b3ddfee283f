"""Query analysis: which domain a question belongs to, which steps it needs, and how sure that is.

The fast path (this module) needs no embedding: the matrix's keywords and
patterns, plus the shape of the message (a code block, pasted material, a
greeting), scored in well under a millisecond. It decides stage 1 of every
chain. The refined path (classify_embed.py) compares the query's embedding
with each domain's example queries and serves the later stages.

In a long message the instruction is usually the first or last line and the
rest is material: material counts for little, or a pasted article about
markets would route "summarize this" to financial analysis.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from mirador.routing.schema import CapabilityMatrix, DomainSpec

# Scan at most this much of the material: keywords deep inside a 100,000-character paste say little.
HEAD_CHARS, TAIL_CHARS = 6000, 2000
MATERIAL_WEIGHT, MATERIAL_CAP = 0.25, 1.5
STRONG_WEIGHT = 3.0  # a strong keyword ("summarize", "translate") outweighs three topic words
SHARPNESS = 2.0  # softmax sharpness over scores: one keyword is a hint, three are a verdict
FALLBACK_PRIOR = 0.8  # the fallback domain's head start: no signal at all means "everyday question"

_PUNCTUATION = ".,!?;:()[]{}\"'“”«»"
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)

# The rest compile on first use, and only for messages that could match them:
# every regex compiled on the way to the first token is time the user waits.
_LAZY_PATTERNS: dict[str, tuple[str, int]] = {
    "greeting": (r"^\s*(hi|hello|hey|yo|hiya|thanks|thank you|good (morning|afternoon|evening)|how are you)\b"
                 r"[\s\w!?,.']*$", re.IGNORECASE),
    "code_block": (r"```|^(?: {4}|\t)\S.*[;{}()=]", re.MULTILINE),
    "traceback": (r"Traceback \(most recent call last\)|^\s+at [\w.$]+\(|^\w+(Error|Exception):", re.MULTILINE),
}
_compiled: dict[str, re.Pattern[str]] = {}


def _pattern(name: str) -> re.Pattern[str]:
    if name not in _compiled:
        _compiled[name] = re.compile(*_LAZY_PATTERNS[name])
    return _compiled[name]


def _looks_like_code(text: str) -> bool:
    return ("```" in text or "\n    " in text or "\n\t" in text) and bool(_pattern("code_block").search(text))


def _has_traceback(text: str) -> bool:
    return ("Traceback" in text or "Error:" in text or "Exception:" in text or "\n  at " in text) \
        and bool(_pattern("traceback").search(text))


_STOPWORDS: dict[str, frozenset[str]] = {
    "English": frozenset("the and is are what how why of to in my i you a for it this do can with".split()),
    "Spanish": frozenset("el la los las de que y es en por para cómo qué una un mi con del al".split()),
    "French": frozenset("le la les de des et est que pour dans une un comment pourquoi je vous du pas".split()),
    "German": frozenset("der die das und ist nicht ich wie was warum ein eine mit für zu den bitte".split()),
    "Italian": frozenset("il lo gli che di per come perché una non sono della questo".split()),
    "Portuguese": frozenset("o os que de para com como não uma um por você é".split()),
    "Dutch": frozenset("de het een en is van niet ik hoe wat waarom met voor".split()),
}
# Unicode blocks of scripts that are not Latin: (first, last, language or script).
_SCRIPTS = (
    (0x3040, 0x30FF, "Japanese"), (0x4E00, 0x9FFF, "Chinese"), (0xAC00, 0xD7AF, "Korean"),
    (0x0400, 0x04FF, "a Cyrillic-script language"), (0x0600, 0x06FF, "Arabic"), (0x0900, 0x097F, "Hindi"),
    (0x0590, 0x05FF, "Hebrew"), (0x0370, 0x03FF, "Greek"), (0x0E00, 0x0E7F, "Thai"),
)


class QueryAnalysis(NamedTuple):
    domain: str  # routed to, after any low-confidence fallback
    confidence: float  # probability of `top`, 0..1
    scores: dict[str, float]  # probability per domain, best first, summing to 1
    path: str  # "fast", or the embedder that refined it ("local:all-MiniLM-L6-v2")
    signals: dict[str, tuple[str, ...]]  # what the fast path matched, per domain
    top: str  # the best-scoring domain before the fallback
    fell_back: bool
    steps: tuple[str, ...] | None  # the chain steps to run; None = the whole chain
    step_reason: str | None
    language: str  # "English", "Spanish", … or "unknown"
    est_tokens: int  # rough size of the query (characters / 4)
    notes: tuple[str, ...]


class _Sections(NamedTuple):
    instruction: str
    material: str


def split_sections(text: str) -> _Sections:
    """The instruction (first line, and a short last line) and the material in between."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(text) <= 600 or len(lines) <= 1:
        head = text[:HEAD_CHARS]
        return _Sections(head, text[HEAD_CHARS:HEAD_CHARS + TAIL_CHARS] if len(text) > HEAD_CHARS else "")
    first, last = lines[0][:400], lines[-1]
    instruction = first
    if len(lines) >= 3 and len(last) <= 200:
        instruction += "\n" + last
        body_lines = lines[1:-1]
    else:
        body_lines = lines[1:]
    body = "\n".join(body_lines)
    if len(body) > HEAD_CHARS + TAIL_CHARS:
        body = body[:HEAD_CHARS] + "\n" + body[-TAIL_CHARS:]
    return _Sections(instruction, body)


class _Index:
    """The matrix's keywords in lookup-friendly form, built once per process."""

    def __init__(self, matrix: CapabilityMatrix):
        self.words: dict[str, list[tuple[str, float, str]]] = {}
        self.prefixes: list[tuple[str, str, float, str]] = []
        self.phrases: list[tuple[str, str, float, str]] = []
        self.patterns: list[tuple[str, str, tuple[str, ...] | None]] = []  # domain, pattern, guard
        self._compiled: dict[str, re.Pattern[str] | None] = {}
        for domain in matrix.domains.values():
            weights = {k: 2.0 if " " in k else 1.0 for k in domain.keywords}
            weights.update((k, STRONG_WEIGHT) for k in domain.strong_keywords)  # listed in both: strong wins
            for keyword, weight in weights.items():
                plain = keyword.rstrip("*").replace("'", "").replace("’", "").replace("-", "")
                if not plain.isalnum():  # a phrase, or a token with symbols (c++, p/e, tl;dr): a substring
                    self.phrases.append((keyword.rstrip("*"), domain.name, weight, keyword))
                elif keyword.endswith("*"):
                    self.prefixes.append((keyword[:-1], domain.name, weight, keyword))
                else:
                    self.words.setdefault(keyword, []).append((domain.name, weight, keyword))
            guards = domain.pattern_guards or (None,) * len(domain.patterns)
            self.patterns += [(domain.name, pattern, guard) for pattern, guard in zip(domain.patterns, guards,
                                                                                       strict=True)]

    def _regex(self, pattern: str) -> re.Pattern[str] | None:
        """Compiled on first use: most patterns never pass their guard, and compiling all costs ~2.5 ms."""
        if pattern not in self._compiled:
            try:
                self._compiled[pattern] = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
            except re.error:
                self._compiled[pattern] = None  # validated on load; a stale cache must not crash the fast path
        return self._compiled[pattern]

    def score(self, text: str, scores: dict[str, float], signals: dict[str, list[str]], weight: float,
              cap: float | None = None) -> None:
        if not text.strip():
            return
        lower = text.lower()
        words = _WORD.findall(lower)
        spaced = [t.strip(_PUNCTUATION) for t in lower.split()]
        tokens = set(words) | set(spaced)
        # Phrases match whole words, whether the text splits them at hyphens or not.
        padded = f" {' '.join(words)} {' '.join(spaced)} "
        hits: dict[str, float] = {}
        seen: set[tuple[str, str]] = set()

        def hit(domain: str, amount: float, label: str) -> None:
            if (domain, label) in seen:
                return
            seen.add((domain, label))
            hits[domain] = hits.get(domain, 0.0) + amount
            signals.setdefault(domain, []).append(label)

        for token in tokens:
            for domain, amount, label in self.words.get(token, ()):
                hit(domain, amount, label)
        for prefix, domain, amount, label in self.prefixes:
            if any(token.startswith(prefix) for token in tokens):
                hit(domain, amount, label)
        for phrase, domain, amount, label in self.phrases:
            if (f" {phrase} " in padded) if phrase[0].isalnum() and phrase[-1].isalnum() else phrase in lower:
                hit(domain, amount, label)
        for domain, label, guard in self.patterns:
            if guard is not None and not any(literal in lower for literal in guard):
                continue
            regex = self._regex(label)
            if regex is not None and regex.search(text):
                hit(domain, 2.0, f"/{label}/" if len(label) <= 30 else f"/{label[:28]}…/")
        for domain, amount in hits.items():
            amount *= weight
            scores[domain] = scores.get(domain, 0.0) + (min(amount, cap) if cap is not None else amount)


_indexes: dict[str, _Index] = {}


def _index(matrix: CapabilityMatrix) -> _Index:
    key = matrix.digest or str(id(matrix))
    if key not in _indexes:
        _indexes[key] = _Index(matrix)
    return _indexes[key]


def fast_scores(query: str, matrix: CapabilityMatrix) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Raw evidence per domain (not probabilities) and what produced it."""
    sections = split_sections(query)
    scores = {name: 0.0 for name in matrix.domains}
    signals: dict[str, list[str]] = {}
    index = _index(matrix)
    index.score(sections.instruction, scores, signals, 1.0)
    index.score(sections.material, scores, signals, MATERIAL_WEIGHT, MATERIAL_CAP)
    _shape(query, sections, scores, signals)
    if matrix.fallback_domain in scores:
        scores[matrix.fallback_domain] += FALLBACK_PRIOR
    return scores, signals


def _shape(query: str, sections: _Sections, scores: dict[str, float], signals: dict[str, list[str]]) -> None:
    """What the message looks like, beyond its words."""

    def add(domain: str, amount: float, label: str) -> None:
        if domain in scores:
            scores[domain] += amount
            signals.setdefault(domain, []).append(label)

    sample = query[:HEAD_CHARS] + query[-TAIL_CHARS:] if len(query) > HEAD_CHARS + TAIL_CHARS else query
    if _looks_like_code(sample):
        add("coding", 3.0, "[a code block]")
    if _has_traceback(sample):
        add("coding", 2.0, "[an error trace]")
    if len(sections.material) >= 400 and not _looks_like_code(sections.material):
        add("summarization", 1.5, "[pasted material]")


def probabilities(scores: dict[str, float]) -> dict[str, float]:
    top = max(scores.values(), default=0.0)
    weights = {name: math.exp(SHARPNESS * (score - top)) for name, score in scores.items()}
    total = sum(weights.values()) or 1.0
    return dict(sorted(((n, w / total) for n, w in weights.items()), key=lambda item: -item[1]))


def detect_language(text: str) -> str:
    sample = text[:2000]
    letters = [c for c in sample if c.isalpha()]
    if not letters:
        return "unknown"
    if not sample.isascii():
        counts: dict[str, int] = {}
        for char in letters:
            code = ord(char)
            if code >= 0x0370:
                for first, last, name in _SCRIPTS:
                    if first <= code <= last:
                        counts[name] = counts.get(name, 0) + 1
                        break
        if counts:
            name = max(counts, key=counts.__getitem__)
            if counts[name] >= max(2, len(letters) // 4):
                return name
    words = _WORD.findall(sample.lower())
    counts = {name: sum(1 for w in words if w in stop) for name, stop in _STOPWORDS.items()}
    best = max(counts, key=lambda name: counts[name])
    if counts[best] == 0:
        return "English" if all(c.isascii() for c in letters) else "unknown"
    if best != "English" and counts[best] <= counts["English"]:
        return "English"
    return best


def detect_steps(domain: DomainSpec, query: str) -> tuple[tuple[str, ...] | None, str | None]:
    """Which of the domain's steps the query asks for: None means the whole chain.

    The first step always stays (it is the quick acknowledgment); a cue for a
    later step skips the steps before it ("proofread this" → straight to polish).
    """
    instruction = split_sections(query).instruction.lower()
    names = tuple(step.name for step in domain.chain)
    if len(instruction) <= 60 and len(_WORD.findall(instruction)) <= 6 and _pattern("greeting").match(instruction):
        return names[:1], "a greeting or small talk: one quick answer is enough"
    padded = " " + " ".join(_WORD.findall(instruction)) + " "
    for index in range(len(domain.chain) - 1, 0, -1):
        cue = next((c for c in domain.chain[index].cues if f" {c} " in padded), None)
        if cue is not None:
            if index == 1:
                return None, None
            return names[:1] + names[index:], (
                f"'{cue}' asks for the {names[index]} step: {', '.join(names[1:index])} skipped")
    return None, None


def analyse(query: str, matrix: CapabilityMatrix, scores: dict[str, float], signals: dict[str, list[str]],
            path: str, notes: list[str] | None = None) -> QueryAnalysis:
    """Turn evidence into a decision: the top domain, or the fallback when nothing stands out."""
    notes = list(notes or [])
    probs = probabilities(scores)
    top, confidence = next(iter(probs.items()))
    domain, fell_back = top, False
    if confidence < matrix.min_confidence and top != matrix.fallback_domain:
        domain, fell_back = matrix.fallback_domain, True
        notes.append(f"no domain stood out ({top} at {confidence:.2f}, below {matrix.min_confidence:.2f}): "
                     f"answering as {domain}")
    language = detect_language(query)
    if not _WORD.search(query):
        notes.append("the query has no words to classify: answering as " + matrix.fallback_domain)
    elif language not in ("English", "unknown"):
        notes.append(f"the query looks like {language}: models with the multilingual strength come first")
    steps, step_reason = detect_steps(matrix.domains[domain], query)
    return QueryAnalysis(
        domain=domain, confidence=round(confidence, 3), scores={n: round(p, 3) for n, p in probs.items()},
        path=path, signals={d: tuple(s) for d, s in signals.items()}, top=top, fell_back=fell_back,
        steps=steps, step_reason=step_reason, language=language, est_tokens=len(query) // 4 + 1,
        notes=tuple(notes),
    )


def classify_fast(query: str, matrix: CapabilityMatrix) -> QueryAnalysis:
    scores, signals = fast_scores(query, matrix)
    return analyse(query, matrix, scores, signals, "fast")
