"""Turns the event stream into the history row of one exchange.

It sees every event the renderer sees, so whatever was shown is what is kept,
including the text of a stage cut short by Ctrl-C or a dying server. The
history module (sqlite3) is only loaded in `finish`, after the stream: it has
no business before the first token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from mirador.errors import EXIT_OK
from mirador.stream.events import Stage, StageFailed, StageFinished, StageStarted, StreamEvent, TokenEvent

if TYPE_CHECKING:
    from mirador.history import ExchangeRecord


class ExchangeRecorder:
    """`shape` is the request's DNA hook (ChainRequest.shape; None: no DNA applied): each stage's
    record keeps the fragment it put in that stage's system message, for training on the prompt
    of the time (history schema 4)."""

    def __init__(self, prompt: str, *, system: str | None, options: dict[str, Any],
                 conversation_id: int | None,
                 shape: Callable[[Stage], tuple[str, dict[str, Any]]] | None = None):
        self.prompt, self.system, self.options = prompt, system, options
        self.conversation_id = conversation_id
        self.shape = shape
        self.created_at = time.time()
        self.stages: list[dict[str, Any]] = []  # StageRecord fields, by name
        self._parts: list[str] = []
        self._current: dict[str, Any] | None = None
        self.exit_code = EXIT_OK

    def handle(self, event: StreamEvent) -> None:
        if isinstance(event, TokenEvent):
            self._parts.append(event.token)
        elif isinstance(event, StageStarted):
            self._current = {"index": event.stage - 1, "model": event.model, "purpose": event.purpose,
                             "confidence": event.confidence, "started_at": time.time()}
            self._parts = []
            self.stages.append(self._current)
        elif isinstance(event, StageFinished) and self._current is not None:
            stats = asdict(event.stats)
            stats.pop("done_reason")
            self._current.update(stats, text=event.text, done_reason=event.stats.done_reason)
            self._current = None
        elif isinstance(event, StageFailed) and self._current is not None:
            # Text cut off by a failure is a partial answer, like one cut off by Ctrl-C.
            self._current.update(text=event.text, error=event.message, interrupted=bool(event.text))
            self._current = None
            if self.exit_code == EXIT_OK:
                self.exit_code = event.exit_code

    def finish(self, interrupted: bool) -> ExchangeRecord:
        from mirador.history import ExchangeRecord, StageRecord

        if interrupted and self._current is not None:
            self._current.update(text="".join(self._parts), interrupted=True)
        stages = [StageRecord(**fields, dna_fragment=self._fragment(fields)) for fields in self.stages]
        failed = [s for s in stages if s.error]
        if interrupted:
            status = "interrupted"
        elif failed and len(failed) == len(stages):
            status = "failed"
        elif failed:
            status = "partial"
        else:
            status = "complete"
        return ExchangeRecord(prompt=self.prompt, status=status, stages=stages,
                              conversation_id=self.conversation_id, system=self.system, options=self.options,
                              created_at=self.created_at)

    def _fragment(self, fields: dict[str, Any]) -> str | None:
        """The DNA fragment this stage was sent. Asked again after the stream, not during it: the
        shaper is a pure function of the stage (DnaShaper even returns its cached string), so this is
        the text the request carried, and nothing is added before the first token."""
        if self.shape is None:
            return ""
        stage = Stage(fields["model"], fields["purpose"], fields["confidence"])
        try:
            return self.shape(stage)[0] or ""
        except Exception:  # never lose the answer over it: the row says "not recorded" instead
            return None
