"""Renderers: the same event stream shown three ways.

- PlainRenderer: pipes. Text only, stages separated by a blank line, no escape codes.
- JsonRenderer: `--json`. One NDJSON object per event, for scripts.
- TerminalRenderer: a terminal. Stage headers, a spinner while a model loads,
  tokens written as they come (so scrollback and copy-paste just work), a footer
  with timings.
Errors of a stage always go to stderr, so stdout holds only the answer.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Protocol

from mirador.stream.events import StageFailed, StageFinished, StageStarted, StageStats, StreamEvent, TokenEvent


class Renderer(Protocol):
    def handle(self, event: StreamEvent) -> None: ...
    def close(self, interrupted: bool) -> None: ...


def report_stage_failure(event: StageFailed, err: IO[str]) -> None:
    err.write(f"mirador: stage {event.stage} ({event.model}) failed: {event.message}\n")
    if event.hint:
        err.write(f"  hint: {event.hint}\n")
    err.flush()


class PlainRenderer:
    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None, final_only: bool = False):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.final_only = final_only
        self._showing = True
        self._wrote_any = False
        self._last = "\n"

    def handle(self, event: StreamEvent) -> None:
        if isinstance(event, TokenEvent):
            if self._showing:
                self.out.write(event.token)
                self.out.flush()
                self._wrote_any = True
                self._last = event.token[-1]
        elif isinstance(event, StageStarted):
            self._showing = not self.final_only or event.stage == event.stages
            if self._showing and self._wrote_any:
                self.out.write("\n" if self._last == "\n" else "\n\n")
                self._last = "\n"
        elif isinstance(event, StageFailed):
            self._end_line()
            report_stage_failure(event, self.err)

    def _end_line(self) -> None:
        if self._last != "\n":
            self.out.write("\n")
            self.out.flush()
            self._last = "\n"

    def close(self, interrupted: bool) -> None:
        self._end_line()


class JsonRenderer:
    def __init__(self, out: IO[str] | None = None):
        self.out = out or sys.stdout

    def handle(self, event: StreamEvent) -> None:
        self.out.write(json.dumps(event.to_json(), ensure_ascii=False) + "\n")
        self.out.flush()

    def close(self, interrupted: bool) -> None:
        if interrupted:
            self.out.write(json.dumps({"event": "interrupted"}) + "\n")
            self.out.flush()


def format_stats(stats: StageStats) -> str:
    parts = []
    if stats.ttft_ms is not None:
        parts.append(f"first token {stats.ttft_ms:.0f} ms")
    if stats.load_ms:
        parts.append(f"load {stats.load_ms:.0f} ms")
    if stats.eval_count is not None:
        parts.append(f"{stats.eval_count} tokens")
    if stats.tokens_per_s:
        parts.append(f"{stats.tokens_per_s:.1f} tok/s")
    if stats.total_ms is not None:
        parts.append(f"total {stats.total_ms / 1000:.2f} s")
    if stats.done_reason and stats.done_reason != "stop":
        parts.append(f"stopped: {stats.done_reason}")
    return " · ".join(parts)


class TerminalRenderer:
    """Rich where it pays (headers, spinner, footers); plain writes for the tokens themselves."""

    def __init__(self, final_only: bool = False):
        from rich.console import Console

        self.console = Console(highlight=False)
        self.err_console = Console(stderr=True, highlight=False)
        self.final_only = final_only
        self._status = None
        self._showing = True
        self._last = "\n"
        colour = self.console.color_system is not None and not self.console.no_color
        self._dim, self._reset = ("\x1b[2m", "\x1b[0m") if colour else ("", "")
        self._token_style = ""

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def handle(self, event: StreamEvent) -> None:
        if isinstance(event, TokenEvent):
            if not self._showing:
                return
            if self._status is not None:
                self._stop_spinner()
            out = self.console.file
            out.write(f"{self._token_style}{event.token}{self._reset if self._token_style else ''}")
            out.flush()
            self._last = event.token[-1]
        elif isinstance(event, StageStarted):
            self._showing = not self.final_only or event.stage == event.stages
            if not self._showing:
                return
            from rich.markup import escape

            purpose = event.purpose.replace("_", " ")
            self.console.print(
                f"[bold cyan]▌ stage {event.stage}/{event.stages}[/] [bold]{escape(event.model)}[/]"
                f" [dim]· {purpose} · confidence {event.confidence:.2f}[/]"
            )
            # Tokens from a low-confidence stage are dimmed: a first guess, not the answer.
            self._token_style = self._dim if event.confidence < 0.6 else ""
            self._status = self.console.status(f"[dim]waiting for {escape(event.model)}…[/]", spinner="dots")
            self._status.start()
            self._last = "\n"
        elif isinstance(event, StageFinished):
            self._stop_spinner()
            if not self._showing:
                return
            self._end_line()
            self.console.print(f"[dim]  {format_stats(event.stats)}[/]\n")
        elif isinstance(event, StageFailed):
            self._stop_spinner()
            self._end_line()
            from rich.markup import escape

            self.err_console.print(
                f"[bold red]✗ stage {event.stage} ({escape(event.model)}) failed:[/] {escape(event.message)}"
            )
            if event.hint:
                self.err_console.print(f"  [dim]hint: {escape(event.hint)}[/]")

    def _end_line(self) -> None:
        if self._last != "\n":
            self.console.file.write("\n")
            self._last = "\n"

    def close(self, interrupted: bool) -> None:
        self._stop_spinner()
        self._end_line()
        if interrupted:
            self.err_console.print("[yellow]interrupted: what was streamed is kept in history[/]")

    def note(self, text: str) -> None:
        from rich.markup import escape

        self.console.print(f"[dim]{escape(text)}[/]")
