"""Throughput of `mirador ask` output with the scripted server emitting 10,000 tokens/s.

Pipe mode must deliver at least 90% of the rate a bare httpx reader gets from the
same server in the same run; terminal mode (a real pseudo-terminal) at least
2,000 tokens/s.
Run: .venv/bin/python scripts/bench/throughput.py [--tokens 20000] [--rate 10000]
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import subprocess
import tempfile
import time

from benchlib import MIRADOR, PYTHON, bench_env, print_table, scripted_server

BARE_READER = """
import json, sys, httpx
body = {"model": "flood:1b", "messages": [{"role": "user", "content": "go"}], "stream": True}
n = 0
with httpx.stream("POST", "http://%s/api/chat", json=body, timeout=None) as response:
    for line in response.iter_lines():
        chunk = json.loads(line)
        if chunk["message"]["content"]:
            n += 1
            sys.stdout.write(chunk["message"]["content"]); sys.stdout.flush()
        if chunk.get("done"): break
"""


def tokens_per_second_pipe(cmd: list[str], env: dict[str, str], tokens: int) -> float:
    """Tokens over the time from the first output byte to the end of the stream."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env)
    first = os.read(proc.stdout.fileno(), 65536)
    start = time.perf_counter()
    while os.read(proc.stdout.fileno(), 65536):
        pass
    elapsed = time.perf_counter() - start
    proc.wait()
    assert first, "no output"
    return tokens / elapsed


def tokens_per_second_tty(cmd: list[str], env: dict[str, str], tokens: int) -> float:
    master, slave = pty.openpty()
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(cmd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    start = None
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        if start is None and b"flood" in data:
            start = time.perf_counter()  # the stage header: tokens follow
    elapsed = time.perf_counter() - (start or time.perf_counter())
    proc.wait()
    os.close(master)
    return tokens / elapsed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=10000)
    args = parser.parse_args()
    models = {"flood:1b": {"num_tokens": args.tokens, "rate": args.rate}}
    with scripted_server(models) as (host, _), tempfile.TemporaryDirectory() as home:
        env = bench_env(home, host)
        ask = [MIRADOR, "ask", "-m", "flood:1b", "--no-log", "go"]
        bare = tokens_per_second_pipe([PYTHON, "-c", BARE_READER % host], env, args.tokens)
        pipe = tokens_per_second_pipe(ask, env, args.tokens)
        tty = tokens_per_second_tty(ask, env, args.tokens)
    rows = [("reader", "tokens/s", "x bare reader")]
    rows += [(name, f"{rate:,.0f}", f"{rate / bare:.2f}") for name, rate in
             (("bare httpx reader (baseline)", bare), ("mirador ask, pipe", pipe), ("mirador ask, terminal", tty))]
    print_table(f"throughput, server emitting {args.rate:,} tokens/s, {args.tokens:,} tokens", rows)
    ok = pipe >= 0.9 * bare and tty >= 2000
    print(f"\nresult: {'PASS' if ok else 'FAIL'} (pipe {pipe / bare:.2f}x of baseline, target 0.90; "
          f"terminal {tty:,.0f} tokens/s, target 2,000)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
