"""`mirador history --latency`: preload hits, waits and time to first token by stage, and what
speculation cost."""

from __future__ import annotations

import argparse
import time

from mirador.cli.common import print_json_lines, print_table


def run_latency(args: argparse.Namespace) -> int:
    from mirador.config import load_settings
    from mirador.predict.latency import latency_by_stage, speculation_totals

    settings = load_settings()
    since = time.time() - args.limit * 86400  # like --energy: the last N days
    rows = latency_by_stage(settings.paths.history_db, since)
    spec = speculation_totals(settings.paths.history_db, since)
    if args.json:
        lines = [{"stage": r.stage, "stages": r.count, "preload_hits": r.hits,
                  "hit_rate": round(r.hit_rate, 3), "median_wait_ms": r.median_wait_ms,
                  "median_ttft_ms": r.median_ttft_ms, "median_ttft_hit_ms": r.median_ttft_hit_ms,
                  "median_ttft_miss_ms": r.median_ttft_miss_ms, "recorded": r.recorded,
                  "derived": r.count - r.recorded} for r in rows]
        if spec is not None and spec.exchanges:
            lines.append({"speculations": spec.exchanges, "wasted_tokens": spec.wasted_tokens,
                          "wasted_seconds": round(spec.wasted_seconds, 3),
                          "wasted_energy_j": round(spec.wasted_energy_j, 3)})
        print_json_lines(lines)
        return 0
    if not rows:
        print(f"No stages in the last {args.limit} days.")
        return 0

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    derived = sum(r.count - r.recorded for r in rows)
    print_table(["stage", "runs", "model warm", "median wait", "median ttft", "ttft warm", "ttft cold"],
                [[str(r.stage), str(r.count), f"{r.hits} ({r.hit_rate:.0%})", ms(r.median_wait_ms),
                  ms(r.median_ttft_ms), ms(r.median_ttft_hit_ms), ms(r.median_ttft_miss_ms)] for r in rows],
                title=f"time to first token by stage, the last {args.limit} days")
    if derived:
        print(f"({derived} older stage{'s' if derived != 1 else ''}: warm and wait derived from the load time)")
    if spec is not None and spec.exchanges:
        print(f"speculation: {spec.exchanges} answer{'s' if spec.exchanges != 1 else ''} started competing "
              f"first stages; the losers cost {spec.wasted_tokens:,} tokens, {spec.wasted_seconds:.1f} s, "
              f"~{spec.wasted_energy_j:.1f} J")
    return 0
