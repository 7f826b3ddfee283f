"""What history stores: exchanges, their stages, ratings, speculation, and the values SQLite can take."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StageRecord:
    index: int  # 0-based position in the chain
    model: str
    purpose: str  # "quick_ack" | "core_analysis" | "deep_synthesis" | "answer"
    confidence: float
    text: str = ""
    done_reason: str | None = None
    error: str | None = None
    interrupted: bool = False
    started_at: float = 0.0
    ttft_ms: float | None = None
    load_ms: float | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    eval_ms: float | None = None
    tokens_per_s: float | None = None
    total_ms: float | None = None
    energy_j: float | None = None  # estimated by the energy cost model
    energy_basis: str | None = None  # what the estimate rests on: "default", "measured tokens/s", "measured power"
    measured_energy_j: float | None = None  # from a sensor over the answer, where one was readable
    measured_by: str | None = None  # "RAPL" or "battery"
    # Schema 3. Whether the model was loaded already when the stage started (None: not known, e.g.
    # rows written before schema 3: mirador.predict.latency derives it from load_ms there).
    preload_hit: bool | None = None
    wait_ms: float | None = None  # from the stage's request until its model began answering: queue + load
    # Schema 4. The DNA fragment the stage's system message carried, exactly as sent: "" for none
    # (--no-dna, no DNA file); None: not recorded (rows written before schema 4, or by other writers).
    dna_fragment: str | None = None


@dataclass
class SpeculationCandidate:
    """One interpretation that streamed during a speculation."""

    model: str
    domain: str | None = None
    probability: float | None = None  # the fast classifier's, for its domain
    tokens: int = 0  # what it generated before it won or was cancelled
    outcome: str = "cancelled"  # "winner" | "cancelled" | "finished" (done before the decision)


@dataclass
class SpeculationRecord:
    """The competing first stages of one exchange, and what the losers cost."""

    candidates: list[SpeculationCandidate]
    winner: str  # the model whose stream became stage 1
    margin: float | None = None  # the router's normalised margin between its top two interpretations
    decided_by: str | None = None  # what chose: the refined classifier's path, or "fast path" when it could not
    decide_ms: float | None = None  # from the start of the streams to the decision
    wasted_tokens: int = 0
    wasted_seconds: float = 0.0  # how long the losers' streams ran, summed
    wasted_energy_j: float | None = None  # estimated from mirador.energy's per-model cost

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeculationRecord:
        candidates = [SpeculationCandidate(**c) for c in data.get("candidates") or []]
        return cls(**{**data, "candidates": candidates})


@dataclass
class ExchangeRecord:
    prompt: str
    status: str  # "complete" | "partial" | "interrupted" | "failed"
    stages: list[StageRecord] = field(default_factory=list)
    conversation_id: int | None = None  # None starts a new conversation
    system: str | None = None
    options: dict = field(default_factory=dict)
    created_at: float = 0.0  # 0 means now
    speculation: SpeculationRecord | None = None


@dataclass
class RatingRecord:
    id: int
    score: int
    note: str | None
    created_at: float


@dataclass
class StoredExchange:
    """An exchange as read back: the record plus its id, conversation and every rating, oldest first."""

    id: int
    conversation_id: int
    created_at: float
    status: str
    prompt: str
    system: str | None
    options: dict
    stages: list[StageRecord]
    ratings: list[RatingRecord]
    speculation: SpeculationRecord | None = None

    @property
    def rating(self) -> int | None:
        """The latest rating counts: the user changed their mind, the older ones stay for learning."""
        return self.ratings[-1].score if self.ratings else None

    @property
    def final_text(self) -> str:
        return final_text(self.stages)

    @property
    def system_prompt(self) -> str | None:
        """The system prompt the user's settings gave the answering stage: `ask --system`, then the
        DNA fragment, joined as the stage's system message joins them ("" for neither). A chain stage's
        message also holds its purpose instruction and compiled context, which are the chain's, not
        the user's. None when history did not record the fragment (before schema 4)."""
        stage = answering_stage(self.stages)
        if stage is None or stage.dna_fragment is None:
            return None
        return "\n\n".join(part for part in (self.system, stage.dna_fragment) if part)

    @property
    def models(self) -> list[str]:
        return [stage.model for stage in self.stages]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rating"] = self.rating
        data["system_prompt"] = self.system_prompt
        return data


@dataclass
class ExchangeSummary:
    """One line of `mirador history`: enough to pick an exchange, not its whole text."""

    id: int
    conversation_id: int
    created_at: float
    status: str
    prompt_start: str  # the first PREVIEW_CHARS characters
    models: list[str]
    rating: int | None
    rating_count: int = 0
    snippet: str | None = None  # search only: where the words matched

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EnergyTotal:
    """One line of `mirador history --energy`: the energy of a model's stages, or of a day's answers."""

    key: str  # the model, or the day as YYYY-MM-DD (local time)
    answers: int  # exchanges with at least one stage counted here
    stages: int
    tokens: int
    energy_j: float  # the sum of the estimates there are
    estimated_stages: int  # stages that have an estimate (older rows have none)
    measured_j: float
    measured_stages: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def final_text(stages: list[StageRecord]) -> str:
    stage = answering_stage(stages)
    return stage.text if stage is not None else ""


def answering_stage(stages: list[StageRecord]) -> StageRecord | None:
    """The stage whose text is the answer: the last one that wrote any, else the last one."""
    for stage in reversed(stages):
        if stage.text:
            return stage
    return stages[-1] if stages else None


# -- making values storable ---------------------------------------------------------------------


def text(value: Any) -> str:
    """A str SQLite can encode. Lone surrogates (from errors="surrogateescape" or a broken decoder)
    make UTF-8 encoding fail; pairs are joined into the character they mean, lone ones become U+FFFD."""
    out = value if isinstance(value, str) else ("" if value is None else str(value))
    try:
        out.encode("utf-8")
        return out
    except UnicodeEncodeError:
        return out.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def opt_text(value: Any) -> str | None:
    return None if value is None else text(value)


def as_float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError, OverflowError):
        return None


def as_bool(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def options_json(options: Any) -> str:
    # ensure_ascii escapes lone surrogates too; default=str keeps an odd value rather than losing the row.
    try:
        return json.dumps(options or {}, ensure_ascii=True, default=str)
    except (TypeError, ValueError):
        return "{}"


STAGE_COLUMNS = (
    "idx, model, purpose, confidence, text, done_reason, error, interrupted, started_at, ttft_ms, "
    "load_ms, prompt_eval_count, eval_count, eval_ms, tokens_per_s, total_ms, "
    "energy_j, energy_basis, measured_energy_j, measured_by, preload_hit, wait_ms, dna_fragment"
)
STAGE_MARKS = ", ".join("?" * (STAGE_COLUMNS.count(",") + 2))  # the columns and exchange_id


def stage_row(stage: StageRecord) -> tuple:
    return (
        as_int(stage.index) or 0, text(stage.model), text(stage.purpose), as_float(stage.confidence),
        text(stage.text), opt_text(stage.done_reason), opt_text(stage.error), int(bool(stage.interrupted)),
        as_float(stage.started_at), as_float(stage.ttft_ms), as_float(stage.load_ms),
        as_int(stage.prompt_eval_count), as_int(stage.eval_count), as_float(stage.eval_ms),
        as_float(stage.tokens_per_s), as_float(stage.total_ms), as_float(stage.energy_j),
        opt_text(stage.energy_basis), as_float(stage.measured_energy_j), opt_text(stage.measured_by),
        as_bool(stage.preload_hit), as_float(stage.wait_ms), opt_text(stage.dna_fragment),
    )


def stage_from_row(r: tuple) -> StageRecord:
    return StageRecord(index=r[0], model=r[1], purpose=r[2], confidence=r[3], text=r[4], done_reason=r[5],
                       error=r[6], interrupted=bool(r[7]), started_at=r[8] or 0.0, ttft_ms=r[9], load_ms=r[10],
                       prompt_eval_count=r[11], eval_count=r[12], eval_ms=r[13], tokens_per_s=r[14],
                       total_ms=r[15], energy_j=r[16], energy_basis=r[17], measured_energy_j=r[18],
                       measured_by=r[19], preload_hit=None if r[20] is None else bool(r[20]), wait_ms=r[21],
                       dna_fragment=r[22])


SPECULATION_COLUMNS = ("winner, margin, decided_by, decide_ms, wasted_tokens, wasted_seconds, wasted_energy_j, "
                       "candidates_json")


def speculation_row(s: SpeculationRecord) -> tuple:
    candidates = json.dumps([asdict(c) for c in s.candidates], ensure_ascii=True, default=str)
    return (text(s.winner), as_float(s.margin), opt_text(s.decided_by), as_float(s.decide_ms),
            as_int(s.wasted_tokens) or 0, as_float(s.wasted_seconds) or 0.0, as_float(s.wasted_energy_j),
            candidates)


def speculation_from_row(r: tuple) -> SpeculationRecord:
    try:
        raw = json.loads(r[7] or "[]")
        candidates = [SpeculationCandidate(**c) for c in raw if isinstance(c, dict)]
    except (ValueError, TypeError):
        candidates = []
    return SpeculationRecord(candidates=candidates, winner=r[0], margin=r[1], decided_by=r[2], decide_ms=r[3],
                             wasted_tokens=r[4] or 0, wasted_seconds=r[5] or 0.0, wasted_energy_j=r[6])
