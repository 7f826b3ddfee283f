"""Shared pieces of the benchmarks: a scripted server process, timing, a table.

Every benchmark compares against a baseline measured in the same run and
prints the ratio: these machines are too noisy for absolute times.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
MIRADOR = str(Path(PYTHON).with_name("mirador"))


@contextmanager
def scripted_server(models: dict):
    """Start `mirador serve --engine scripted` on a free port; yield its host:port."""
    with tempfile.TemporaryDirectory(prefix="mirador-bench-") as tmp:
        script = Path(tmp) / "script.json"
        script.write_text(json.dumps({"models": models}))
        proc = subprocess.Popen(
            [MIRADOR, "serve", "--engine", "scripted", "--port", "0", "--script", str(script)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            line = proc.stdout.readline()
            if "listening on" not in line:
                raise SystemExit(f"the scripted server did not start: {line!r}")
            url = line.split("listening on ", 1)[1].split()[0]
            yield url.removeprefix("http://"), tmp
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def bench_env(home: str, host: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRADOR_", "OLLAMA_"))}
    env["MIRADOR_HOME"] = home
    if host:
        env["OLLAMA_HOST"] = host
    return env


def time_to_first_byte(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from exec to the first byte on the process's stdout (pipe)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    elapsed = time.perf_counter() - start
    if not ready or not os.read(proc.stdout.fileno(), 1):
        proc.kill()
        raise SystemExit(f"no output from {cmd}")
    proc.stdout.read()
    proc.wait()
    return elapsed


def wall_time(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                   env=env, check=False)
    return time.perf_counter() - start


def interleaved(runs: int, candidates: dict[str, callable]) -> dict[str, list[float]]:
    """Run every candidate once per round, so drift in machine load hits all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, measure in candidates.items():
            samples[name].append(measure())
    return samples


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def print_table(title: str, rows: list[tuple[str, ...]]) -> None:
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def which(name: str) -> str | None:
    """A command of this venv first (where `llm` lives when the test extra is installed), then PATH."""
    beside = Path(PYTHON).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)
