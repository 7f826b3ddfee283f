"""`mirador history`: past questions, their chains of stages, timings and ratings.

On a terminal the output is rich; in a pipe it is plain text with no escape
codes; with --json it is one JSON object per line. rich is imported only when
it is used, so a piped or JSON listing starts as fast as the interpreter.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import Any

from mirador.errors import MiradorError, UsageError

PROMPT_WIDTH = 60
SYSTEM_PROMPT_WIDTH = 120  # `history show` gives the recorded system prompt in brief; --json in full
_STATUS_STYLE = {"complete": "green", "partial": "yellow", "interrupted": "yellow", "failed": "red"}
# Control characters a stored prompt or answer may carry (a model can emit ANSI codes); never
# replay them into the user's terminal or a pipe.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--limit", type=int, default=20, metavar="N",
                        help="how many exchanges to list (default 20)")
    parser.add_argument("-q", "--query", metavar="TEXT",
                        help="only exchanges whose prompt or answer holds these words")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--energy", action="store_true",
                        help="energy totals by model and by day (the last N days): estimated, and measured"
                             " where a sensor allowed")
    parser.add_argument("--latency", action="store_true",
                        help="by stage: how often its model was already loaded (preload hits), its wait, time"
                             " to first token (the last N days)")
    parser.set_defaults(run=run_list)
    actions = parser.add_subparsers(dest="action", metavar="show")
    show = actions.add_parser("show", help="one exchange in full: prompt, every stage, timings, ratings",
                              description="one exchange in full: prompt, every stage, timings, ratings")
    show.add_argument("id", metavar="ID", help="the exchange id (see `mirador history`), or 'last'")
    # SUPPRESS: `mirador history --json show 3` keeps the --json given before the sub-command.
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print it as JSON")
    show.set_defaults(run=run_show)


# -- the list ------------------------------------------------------------------------------------


def run_list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UsageError(f"-n must be 1 or more, not {args.limit}")
    if args.energy:
        return run_energy(args)
    if args.latency:
        from mirador.cli.latency import run_latency

        return run_latency(args)
    store = _open_store()
    if store is None:
        return _say_empty(args, "No history yet. Ask something first: mirador ask \"…\"")
    with store:
        summaries = store.search(args.query, args.limit) if args.query else store.recent(args.limit)
    if not summaries:
        if args.query:
            return _say_empty(args, f"Nothing in the history matches {args.query!r}.")
        return _say_empty(args, "No history yet. Ask something first: mirador ask \"…\"")
    if args.json:
        _prepare_stdout()
        for summary in summaries:
            record = summary.to_dict()
            record["when"] = _iso(summary.created_at)
            print(json.dumps(record, ensure_ascii=False))
    elif sys.stdout.isatty():
        _print_rich_table(summaries)
    else:
        _prepare_stdout()
        _print_plain_table(summaries)
    return 0


def _say_empty(args: argparse.Namespace, line: str) -> int:
    # JSON consumers get an empty stream on stdout; the friendly line goes where a human looks.
    print(line, file=sys.stderr if args.json else sys.stdout)
    return 0


def _row(summary: Any) -> list[str]:
    rating = "-" if summary.rating is None else str(summary.rating)
    if summary.rating_count > 1:
        rating += f" ({summary.rating_count})"
    return [str(summary.id), _when(summary.created_at), summary.status, rating,
            " > ".join(summary.models) or "-", _one_line(summary.prompt_start, PROMPT_WIDTH)]


def _print_plain_table(summaries: list[Any]) -> None:
    header = ["id", "when", "status", "rating", "models", "prompt"]
    rows = [header] + [_row(summary) for summary in summaries]
    widths = [max(len(row[col]) for row in rows) for col in range(len(header) - 1)]
    for row in rows:
        middle = [cell.ljust(width) for cell, width in zip(row[1:-1], widths[1:], strict=True)]
        cells = [row[0].rjust(widths[0]), *middle]
        print("  ".join(cells + [row[-1]]).rstrip())


def _print_rich_table(summaries: list[Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", justify="right", style="bold")
    table.add_column("when", style="dim", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("rating", justify="center", no_wrap=True)
    table.add_column("models", style="cyan")
    table.add_column("prompt", no_wrap=True, overflow="ellipsis", ratio=1)
    for summary in summaries:
        cells = _row(summary)
        cells[4] = " → ".join(summary.models) or "-"
        # Text, not markup: a prompt holding "[bold]" must print as typed.
        table.add_row(*(Text(cell) for cell in cells[:2]),
                      Text(cells[2], style=_STATUS_STYLE.get(summary.status, "")),
                      *(Text(cell) for cell in cells[3:]))
    Console().print(table)


# -- energy --------------------------------------------------------------------------------------


def run_energy(args: argparse.Namespace) -> int:
    store = _open_store()
    if store is None:
        return _say_empty(args, "No history yet. Ask something first: mirador ask \"…\"")
    with store:
        by_model = store.energy_totals("model")
        by_day = store.energy_totals("day")[: args.limit]
    if args.json:
        for by, rows in (("model", by_model), ("day", by_day)):
            for row in rows:
                print(json.dumps({"by": by, **row.to_dict()}, ensure_ascii=False))
        return 0
    from mirador.cli.common import print_table

    print_table(["model", "answers", "tokens", "estimated", "J/token", "measured"],
                [[t.key, str(t.answers), f"{t.tokens:,}", _joules(t.energy_j, t.estimated_stages, t.stages),
                  f"{t.energy_j / t.tokens:.3f}" if t.tokens and t.estimated_stages else "-",
                  _joules(t.measured_j, t.measured_stages, t.stages)] for t in by_model],
                title="energy by model (estimated; measured where a sensor allowed)")
    print()
    print_table(["day", "answers", "estimated", "measured"],
                [[t.key, str(t.answers), _joules(t.energy_j, t.estimated_stages, t.stages),
                  _joules(t.measured_j, t.measured_stages, t.stages)] for t in by_day],
                title="energy by day")
    return 0


def _joules(total: float, counted: int, stages: int) -> str:
    """'1.2 kJ (0.33 Wh)', and how many stages have no figure (older answers; no sensor for measurements)."""
    if not counted:
        return "-"
    text = f"{total:.0f} J" if total < 1000 else f"{total / 1000:.1f} kJ"
    text += f" ({total / 3600:.2g} Wh)"
    return text + (f"; none for {stages - counted} of {stages} stages" if counted < stages else "")


# -- one exchange --------------------------------------------------------------------------------


def run_show(args: argparse.Namespace) -> int:
    store = _open_store()
    if store is None:
        raise MiradorError("the history is empty", hint="ask something first: mirador ask \"…\"")
    with store:
        exchange_id = _parse_id(args.id, store)
        exchange = store.get(exchange_id)
    if exchange is None:
        raise MiradorError(f"there is no exchange with id {exchange_id}", hint="`mirador history` lists the ids")
    if getattr(args, "json", False):
        _prepare_stdout()
        record = exchange.to_dict()
        record["when"] = _iso(exchange.created_at)
        print(json.dumps(record, ensure_ascii=False))
    elif sys.stdout.isatty():
        _print_rich_exchange(exchange)
    else:
        _prepare_stdout()
        _print_plain_exchange(exchange)
    return 0


def _parse_id(raw: str, store: Any) -> int:
    if raw.strip().lower() == "last":
        last = store.last_exchange_id()
        if last is None:
            raise MiradorError("the history is empty", hint="ask something first: mirador ask \"…\"")
        return last
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"'{raw}' is not an exchange id", hint="`mirador history` lists the ids") from None


def _header(exchange: Any) -> str:
    parts = [f"exchange {exchange.id}", f"conversation {exchange.conversation_id}",
             _when(exchange.created_at), exchange.status]
    if exchange.rating is not None:
        parts.append(f"rated {exchange.rating}")
    return " · ".join(parts)


def _stage_title(stage: Any, total: int) -> str:
    confidence = "?" if stage.confidence is None else f"{stage.confidence:.2f}"
    return f"stage {stage.index + 1}/{total} · {stage.model} · {stage.purpose} · confidence {confidence}"


def _stage_facts(stage: Any) -> list[str]:
    """Timings and outcome of one stage, only those the server reported."""
    facts = []
    if stage.preload_hit is not None:
        facts.append("model was loaded" if stage.preload_hit else "model was not loaded")
    for label, value in (("waited", stage.wait_ms), ("first token", stage.ttft_ms), ("load", stage.load_ms),
                         ("total", stage.total_ms)):
        if value is not None:
            facts.append(f"{label} {_duration(value)}")
    if stage.prompt_eval_count is not None:
        facts.append(f"{stage.prompt_eval_count} prompt tokens")
    if stage.eval_count is not None:
        facts.append(f"{stage.eval_count} tokens")
    if stage.tokens_per_s is not None:
        facts.append(f"{stage.tokens_per_s:.1f} tok/s")
    if stage.energy_j is not None:
        facts.append(f"~{stage.energy_j:.1f} J ({stage.energy_basis or 'estimated'})")
    if stage.measured_energy_j is not None:
        facts.append(f"{stage.measured_energy_j:.1f} J measured ({stage.measured_by or 'sensor'})")
    if stage.done_reason:
        facts.append(f"done: {stage.done_reason}")
    if stage.interrupted:
        facts.append("INTERRUPTED")
    return facts


def _speculation_lines(spec: Any) -> list[str]:
    """The competing first stages of one exchange, the winner, and what the losers cost."""
    margin = "" if spec.margin is None else f" (margin {spec.margin:.2f})"
    decided = f" by {spec.decided_by}" if spec.decided_by else ""
    after = "" if spec.decide_ms is None else f" after {_duration(spec.decide_ms)}"
    lines = [f"{len(spec.candidates)} first stages started together{margin}; {spec.winner} chosen{decided}{after}"]
    for c in spec.candidates:
        domain = f" ({c.domain}{'' if c.probability is None else f', {c.probability:.2f}'})" if c.domain else ""
        lines.append(f"  {c.model}{domain}: {c.outcome}, {c.tokens} tokens")
    energy = "" if spec.wasted_energy_j is None else f", ~{spec.wasted_energy_j:.1f} J"
    lines.append(f"  wasted: {spec.wasted_tokens} tokens, {spec.wasted_seconds:.1f} s{energy}")
    return lines


def _rating_line(rating: Any) -> str:
    line = f"{_when(rating.created_at)}  {rating.score}/5"
    return f"{line}  {_clean(rating.note)}" if rating.note else line


def _system_prompt_line(exchange: Any) -> str:
    """The system prompt the answer was given under (--system and the DNA of the time), in brief."""
    prompt = exchange.system_prompt
    if prompt is None:
        return "system prompt: not recorded (an answer from before history kept it)"
    if not prompt:
        return "system prompt: none (no DNA, no --system)"
    brief = _one_line(prompt, SYSTEM_PROMPT_WIDTH)
    whole = "" if brief == prompt else f" ({len(prompt)} characters; --json shows it whole)"
    return f"system prompt: {brief}{whole}"


def _print_plain_exchange(exchange: Any) -> None:
    print(_header(exchange))
    if exchange.system:
        print(f"\nsystem:\n{_clean(exchange.system)}")
    print(_system_prompt_line(exchange))
    if exchange.options:
        print(f"options: {json.dumps(exchange.options, ensure_ascii=False)}")
    print(f"\nprompt:\n{_clean(exchange.prompt)}")
    for stage in exchange.stages:
        print(f"\n--- {_stage_title(stage, len(exchange.stages))} ---")
        facts = _stage_facts(stage)
        if facts:
            print(" · ".join(facts))
        if stage.error:
            print(f"error: {_clean(stage.error)}")
        if stage.text:
            print(_clean(stage.text))
    if not exchange.stages:
        print("\n(no stage ran)")
    if exchange.speculation is not None:
        print("\nspeculation:")
        for line in _speculation_lines(exchange.speculation):
            print(f"  {_clean(line)}")
    if exchange.ratings:
        print("\nratings:")
        for rating in exchange.ratings:
            print(f"  {_rating_line(rating)}")


def _print_rich_exchange(exchange: Any) -> None:
    from rich.console import Console
    from rich.text import Text

    console = Console()
    console.print(Text(_header(exchange), style="bold"))
    if exchange.system:
        console.print(Text("system: ", style="dim") + Text(exchange.system))
    console.print(Text(_system_prompt_line(exchange), style="dim"))
    if exchange.options:
        console.print(Text(f"options: {json.dumps(exchange.options, ensure_ascii=False)}", style="dim"))
    console.print(Text("\nprompt", style="bold cyan"))
    console.print(Text(exchange.prompt))
    for stage in exchange.stages:
        console.print()
        console.rule(Text(_stage_title(stage, len(exchange.stages)), style="bold"), align="left")
        facts = _stage_facts(stage)
        if facts:
            console.print(Text(" · ".join(facts), style="red" if stage.interrupted else "dim"))
        if stage.error:
            console.print(Text(f"error: {stage.error}", style="red"))
        if stage.text:
            console.print(Text(stage.text))
    if not exchange.stages:
        console.print(Text("(no stage ran)", style="dim"))
    if exchange.speculation is not None:
        console.print(Text("\nspeculation", style="bold cyan"))
        for line in _speculation_lines(exchange.speculation):
            console.print(Text(f"  {line}"))
    if exchange.ratings:
        console.print(Text("\nratings", style="bold cyan"))
        for rating in exchange.ratings:
            console.print(Text(f"  {_rating_line(rating)}"))


# -- helpers -------------------------------------------------------------------------------------


def _open_store() -> Any:
    """The store, or None when no history file exists yet (reading must not create one)."""
    from mirador.config import paths

    if not paths().history_db.exists():
        return None
    from mirador.history import HistoryStore

    return HistoryStore.open_default()


def _prepare_stdout() -> None:
    # A stored text may hold characters the pipe's encoding lacks; print a "?" rather than fail.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")


def _clean(text: str | None) -> str:
    return _CONTROL.sub("", text or "")


def _one_line(text: str, width: int) -> str:
    flat = " ".join(_clean(text.replace("\n", " ").replace("\t", " ")).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


def _duration(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"
