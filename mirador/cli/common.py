"""Small helpers shared by the CLI modules: one client call per command, tables, sizes."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def call_server(settings: Any, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(client)` on one event loop with one connection pool."""
    import asyncio

    from mirador.runtime.client import OllamaClient

    async def main() -> T:
        async with OllamaClient(settings.host, connect_timeout=settings.connect_timeout) as client:
            return await work(client)

    return asyncio.run(main())


def human_size(size: Any) -> str:
    if not isinstance(size, (int, float)) or size <= 0:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def print_json_lines(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def print_table(headers: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A rich table on a terminal; aligned plain columns, no escape codes, in a pipe."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", header_style="bold")
        for header in headers:
            table.add_column(header)
        for row in rows:
            table.add_row(*row)
        Console(highlight=False).print(table)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    if title:
        print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
