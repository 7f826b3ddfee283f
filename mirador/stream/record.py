"""Turns the event stream into the history row of one exchange.

It sees every event the renderer sees, so whatever was shown is what is kept,
including the text of a stage cut short by Ctrl-C or a dying server.
"""

from __future__ import annotations

import time
from typing import Any

from mirador.errors import EXIT_OK
from mirador.history import ExchangeRecord, StageRecord
from mirador.stream.events import StageFailed, StageFinished, StageStarted, StreamEvent, TokenEvent


class ExchangeRecorder:
    def __init__(self, prompt: str, *, system: str | None, options: dict[str, Any],
                 conversation_id: int | None):
        self.record = ExchangeRecord(prompt=prompt, status="complete", conversation_id=conversation_id,
                                     system=system, options=options, created_at=time.time())
        self._parts: list[str] = []
        self._current: StageRecord | None = None
        self.exit_code = EXIT_OK

    def handle(self, event: StreamEvent) -> None:
        if isinstance(event, TokenEvent):
            self._parts.append(event.token)
        elif isinstance(event, StageStarted):
            self._current = StageRecord(index=event.stage - 1, model=event.model, purpose=event.purpose,
                                        confidence=event.confidence, started_at=time.time())
            self._parts = []
            self.record.stages.append(self._current)
        elif isinstance(event, StageFinished) and self._current is not None:
            stats = event.stats
            stage = self._current
            stage.text = event.text
            stage.done_reason = stats.done_reason
            stage.ttft_ms, stage.total_ms, stage.load_ms = stats.ttft_ms, stats.total_ms, stats.load_ms
            stage.prompt_eval_count, stage.eval_count = stats.prompt_eval_count, stats.eval_count
            stage.eval_ms, stage.tokens_per_s = stats.eval_ms, stats.tokens_per_s
            self._current = None
        elif isinstance(event, StageFailed) and self._current is not None:
            self._current.text = event.text
            self._current.error = event.message
            # Text cut off by a failure is a partial answer, like one cut off by Ctrl-C.
            self._current.interrupted = bool(event.text)
            self._current = None
            if self.exit_code == EXIT_OK:
                self.exit_code = event.exit_code

    def finish(self, interrupted: bool) -> ExchangeRecord:
        if interrupted and self._current is not None:
            self._current.text = "".join(self._parts)
            self._current.interrupted = True
        stages = self.record.stages
        failed = [s for s in stages if s.error]
        if interrupted:
            self.record.status = "interrupted"
        elif failed and len(failed) == len(stages):
            self.record.status = "failed"
        elif failed:
            self.record.status = "partial"
        return self.record
