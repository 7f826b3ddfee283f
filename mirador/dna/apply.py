"""Applying a ModelDNA to one stage of a chain: a short system-prompt fragment plus model options.

Each stage gets what suits its purpose. The quick acknowledgment (stage 1 of a
chain) only learns who it is talking to and how, never to be long or to
structure its answer; its length limit stays small whatever the verbosity.
The fragment names only what a model can act on, in one short sentence each,
because every token of it is paid again by every stage of every question.
"""

from __future__ import annotations

from typing import Any

from mirador.dna.schema import ModelDNA

TEMPERATURE = {"systematic": 0.3, "analytical": 0.5, "creative": 0.9}
TOP_P = {"systematic": 0.9, "analytical": 0.9, "creative": 0.95}
# Answer length limits: 0 verbosity -> 256 tokens, 1 -> 2048; a quick pace takes 60% of that;
# a core-analysis draft 75%, since a later stage writes the final answer.
MIN_PREDICT, MAX_PREDICT = 256, 2048
QUICK_PACE_FACTOR = 0.6
PURPOSE_LENGTH_FACTOR = {"answer": 1.0, "deep_synthesis": 1.0, "core_analysis": 0.75}
QUICK_ACK_PREDICT = (64, 96)  # at verbosity 0 and 1: brief whatever the profile says

REASONING = {
    "systematic": "Reason systematically: work step by step and make the structure visible.",
    "creative": "Think creatively: offer alternatives and unusual angles.",
    "analytical": "Be analytical: weigh trade-offs, causes and evidence.",
}
EVIDENCE = {
    "data_driven": "Back claims with data, numbers or sources.",
    "intuitive": "Prefer intuition, rules of thumb and analogies to data.",
}
TONE = {
    "neutral": "",
    "friendly": "Use a warm, friendly tone.",
    "formal": "Use a formal tone.",
    "direct": "Be direct; no pleasantries.",
}
STRUCTURE = {
    "prose": "Write in prose paragraphs, not lists.",
    "bullets": "Use bullet points.",
    "mixed": "",
}


def _verbosity(value: float) -> str:
    if value <= 0.2:
        return "Be as brief as possible."
    if value <= 0.45:
        return "Be concise."
    if value < 0.7:
        return ""  # the models' own habit: saying it would only cost tokens
    if value < 0.9:
        return "Be thorough."
    return "Be exhaustive: cover every relevant detail."


def _depth(value: float) -> str:
    if value <= 0.25:
        return "Use plain words; avoid jargon."
    if value < 0.7:
        return ""
    return "The user is technically expert: skip the basics, use precise terms."


def _names(items: list[str]) -> str:
    return ", ".join(items)


def fragment(dna: ModelDNA, purpose: str) -> str:
    """The system-prompt fragment for a stage with this purpose ("" when nothing to say)."""
    brief = purpose == "quick_ack"
    parts: list[str] = []
    if not brief:
        parts.append(REASONING[dna["reasoning_style"]])
        parts.append(_verbosity(dna["verbosity"]))
        if dna["response_pace"] == "quick":
            parts.append("Get to the point quickly.")
    parts.append(_depth(dna["technical_depth"]))
    if dna["domain_expertise"]:
        parts.append(f"The user knows {_names(dna['domain_expertise'])} well; assume that background.")
    if dna["preferred_frameworks"]:
        parts.append(f"Prefer {_names(dna['preferred_frameworks'])} in examples and recommendations.")
    if not brief:
        parts.append(EVIDENCE[dna["evidence_preference"]])
        parts.append(STRUCTURE[dna["format.structure"]])
        if dna["format.code_first"]:
            parts.append("When code answers the question, show the code first, then explain.")
        parts.append("Illustrate with a short example where it helps." if dna["format.examples"]
                     else "No examples unless asked.")
    parts.append(TONE[dna["tone"]])
    if dna["language"].lower() not in ("auto", ""):
        parts.append(f"Answer in {dna['language']}.")
    text = " ".join(part for part in parts if part)
    return f"The user's preferences: {text}" if text else ""


def options(dna: ModelDNA, purpose: str) -> dict[str, Any]:
    """Model options for a stage: the user's explicit options (config, -o) override these."""
    style = dna["reasoning_style"]
    temperature = TEMPERATURE[style] + (0.1 if dna["evidence_preference"] == "intuitive" else 0.0)
    result: dict[str, Any] = {"temperature": round(temperature, 2), "top_p": TOP_P[style]}
    verbosity = float(dna["verbosity"])
    if purpose == "quick_ack":
        low, high = QUICK_ACK_PREDICT
        result["num_predict"] = round(low + (high - low) * verbosity)
        return result
    length = MIN_PREDICT + (MAX_PREDICT - MIN_PREDICT) * verbosity
    if dna["response_pace"] == "quick":
        length *= QUICK_PACE_FACTOR
    result["num_predict"] = int(round(length * PURPOSE_LENGTH_FACTOR.get(purpose, 1.0)))
    return result


class DnaShaper:
    """The per-stage hook a ChainRequest calls: stage -> (system fragment, options)."""

    def __init__(self, dna: ModelDNA):
        self.dna = dna
        self._cache: dict[str, tuple[str, dict[str, Any]]] = {}

    def __call__(self, stage: Any) -> tuple[str, dict[str, Any]]:
        purpose = stage.purpose
        if purpose not in self._cache:
            self._cache[purpose] = (fragment(self.dna, purpose), options(self.dna, purpose))
        text, opts = self._cache[purpose]
        return text, dict(opts)
