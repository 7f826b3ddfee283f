"""Time to first token of a whole `mirador ask -m M "hi"` process.

From exec to the first answer byte on stdout, against the scripted server with
zero delays, versus a minimal Python script that streams the same request with
httpx. Target (core issue): at most 1.5x the minimal script.
Run: .venv/bin/python scripts/bench/ttft.py [--runs 20]
"""

from __future__ import annotations

import argparse
import tempfile

from benchlib import (
    MIRADOR,
    PYTHON,
    bench_env,
    interleaved,
    median_ms,
    print_table,
    scripted_server,
    time_to_first_byte,
)

MINIMAL_CLIENT = """
import json, sys, httpx
body = {"model": "bench:1b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
with httpx.stream("POST", "http://%s/api/chat", json=body, timeout=None) as response:
    for line in response.iter_lines():
        chunk = json.loads(line)
        sys.stdout.write(chunk["message"]["content"]); sys.stdout.flush()
        if chunk.get("done"): break
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    models = {"bench:1b": {"text": "Hello there, this is a benchmark answer.", "load_time": 0, "ttft": 0, "rate": 0}}
    with scripted_server(models) as (host, _), tempfile.TemporaryDirectory() as home:
        env = bench_env(home, host)
        samples = interleaved(args.runs, {
            "minimal httpx script": lambda: time_to_first_byte([PYTHON, "-c", MINIMAL_CLIENT % host], env),
            "mirador ask -m bench:1b hi": lambda: time_to_first_byte([MIRADOR, "ask", "-m", "bench:1b", "hi"], env),
        })
    base = median_ms(samples["minimal httpx script"])
    rows = [("process", "median ms to first byte", "x minimal")]
    rows += [(name, f"{median_ms(v):.1f}", f"{median_ms(v) / base:.2f}") for name, v in samples.items()]
    print_table(f"time to first token, whole process, median of {args.runs} (target: at most 1.5x)", rows)
    ratio = median_ms(samples["mirador ask -m bench:1b hi"]) / base
    print(f"\nresult: {'PASS' if ratio <= 1.5 else 'FAIL'} (ratio {ratio:.2f})")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
