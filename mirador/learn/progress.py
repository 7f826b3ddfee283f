"""Training progress: a bar on a terminal, plain lines in a pipe or cron, nothing with --quiet.

The trainers know nothing of terminals: they call `progress(step, total, loss, tokens)` after each
optimizer step (`tokens`: the training tokens seen so far, cumulative). A reporter turns that into
- `bar`: a rich progress bar with step, loss and tokens/s, redrawn in place (a terminal only);
- `plain`: one line every `every` steps and at the last, no escape codes, flushed at once so a
  pipe or cron log shows where a run is (and a test can watch it);
- `quiet`: nothing (cron wants only errors and the outcome line).
Every reporter also writes a `step` event to the run's JSON-lines log at the plain cadence.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

ProgressFn = Callable[[int, int, float, int], None]  # (step, total steps, loss, cumulative tokens)
MODES = ("auto", "bar", "plain", "quiet")


def choose_mode(quiet: bool = False, stream: TextIO | None = None) -> str:
    if quiet:
        return "quiet"
    stream = stream or sys.stdout
    terminal = hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM", "") != "dumb"
    return "bar" if terminal else "plain"


def plain_every(total: int) -> int:
    """About ten lines per run, at least one every 50 steps: enough to follow, little for a cron mail."""
    return max(1, min(50, total // 10 or 1))


class TrainingProgress:
    """A context manager giving the trainer its callback; `with` closes the bar even on errors."""

    def __init__(self, mode: str = "auto", *, stream: TextIO | None = None, every: int | None = None,
                 log: Callable[..., None] | None = None):
        self.stream = stream or sys.stdout
        self.mode = choose_mode(stream=self.stream) if mode == "auto" else mode
        self.every = every
        self.log = log  # RunLog.event
        self.start = 0.0
        self.last: dict[str, Any] = {}
        self._bar: Any = None
        self._task: Any = None
        self._first: tuple[float, int] | None = None  # (time, tokens) at the first reported step

    def __enter__(self) -> TrainingProgress:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __call__(self, step: int, total: int, loss: float, tokens: int) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        # The rate counts from the first reported step: the time before it went to loading the model
        # and scoring the base, not to training (a tenth of a run on a 135M model, more on a busy CPU).
        if self._first is None:
            self._first = (now, tokens)
        since, tokens_then = self._first
        rate = (tokens - tokens_then) / (now - since) if now > since and tokens > tokens_then else 0.0
        self.last = {"step": step, "total": total, "loss": loss, "tokens": tokens, "tokens_per_s": rate}
        every = self.every or plain_every(total)
        due = step % every == 0 or step == total or step == 1
        if due and self.log is not None:
            self.log("step", step=step, total=total, loss=round(loss, 5), tokens=tokens,
                     tokens_per_s=round(rate, 1))
        if self.mode == "bar":
            self._draw(step, total, loss, rate)
        elif self.mode == "plain" and due:
            speed = f"{rate:.0f} tokens/s" if rate else "- tokens/s"
            self.stream.write(f"step {step}/{total}  loss {loss:.4f}  {speed}  {elapsed:.0f}s\n")
            self.stream.flush()

    def _draw(self, step: int, total: int, loss: float, rate: float) -> None:
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]:.4f}"),
                                 TextColumn("{task.fields[rate]:.0f} tokens/s"), TimeElapsedColumn(),
                                 console=Console(file=self.stream), transient=False)
            self._task = self._bar.add_task("training", total=total, loss=loss, rate=rate)
            self._bar.start()
        self._bar.update(self._task, completed=step, total=total, loss=loss, rate=rate)
