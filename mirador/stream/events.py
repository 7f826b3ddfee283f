"""The events of a confidence-weighted stream.

Every token carries its stage, model and confidence; stages open and close with
their own events so renderers, history and tests see one uniform sequence.
`to_json()` is the NDJSON form `mirador ask --json` prints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    """One step of a chain: which model, why, and how far to trust it."""

    model: str
    purpose: str  # "answer" | "quick_ack" | "core_analysis" | "deep_synthesis"
    confidence: float
    max_tokens: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageStats:
    ttft_ms: float | None = None  # from sending the request to the first token, as the client saw it
    total_ms: float | None = None
    load_ms: float | None = None  # the server's load_duration: non-zero means a cold model
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    eval_ms: float | None = None
    tokens_per_s: float | None = None
    done_reason: str | None = None
    # What the request waited on the server before its model began reading the prompt: the queue
    # behind other requests plus the load (total - prompt evaluation - generation; else load_ms).
    wait_ms: float | None = None

    @classmethod
    def from_final_chunk(cls, chunk: dict[str, Any], ttft_ms: float | None, total_ms: float) -> StageStats:
        def ms(key: str) -> float | None:
            value = chunk.get(key)
            return value / 1e6 if isinstance(value, (int, float)) else None

        eval_count = chunk.get("eval_count")
        eval_ns = chunk.get("eval_duration")
        rate = eval_count / eval_ns * 1e9 if eval_count and eval_ns else None
        total, prompt_ms, eval_ms, load_ms = (ms("total_duration"), ms("prompt_eval_duration"), ms("eval_duration"),
                                              ms("load_duration"))
        wait = max(0.0, total - prompt_ms - eval_ms) if None not in (total, prompt_ms, eval_ms) else load_ms
        return cls(
            ttft_ms=ttft_ms,
            total_ms=total_ms,
            load_ms=load_ms,
            prompt_eval_count=chunk.get("prompt_eval_count"),
            eval_count=eval_count,
            eval_ms=eval_ms,
            tokens_per_s=rate,
            done_reason=chunk.get("done_reason"),
            wait_ms=wait,
        )


@dataclass(frozen=True)
class StageStarted:
    stage: int  # 1-based, as users count
    stages: int
    model: str
    purpose: str
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {"event": "stage_start", **asdict(self)}


@dataclass(frozen=True)
class TokenEvent:
    stage: int
    model: str
    token: str
    confidence: float

    def to_json(self) -> dict[str, Any]:
        return {"event": "token", "stage": self.stage, "model": self.model, "token": self.token,
                "confidence": self.confidence}


@dataclass(frozen=True)
class StageFinished:
    stage: int
    model: str
    text: str
    stats: StageStats

    def to_json(self) -> dict[str, Any]:
        return {"event": "stage_end", "stage": self.stage, "model": self.model,
                **{k: v for k, v in asdict(self.stats).items() if v is not None}}


@dataclass(frozen=True)
class StageFailed:
    stage: int
    model: str
    text: str  # whatever arrived before the failure
    message: str
    hint: str | None
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {"event": "stage_error", "stage": self.stage, "model": self.model, "error": self.message,
                "hint": self.hint, "partial_text": self.text}


StreamEvent = StageStarted | TokenEvent | StageFinished | StageFailed
