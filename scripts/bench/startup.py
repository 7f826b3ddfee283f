"""Start-up: `mirador --help` and `--version` against `python -c pass` in the same venv.

Target (core issue): under 4x bare Python. `llm --help` is reported when installed (a peer).
Run: .venv/bin/python scripts/bench/startup.py [--runs 20]
"""

from __future__ import annotations

import argparse
import tempfile

from benchlib import MIRADOR, PYTHON, bench_env, interleaved, median_ms, print_table, wall_time, which


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = bench_env(home)
        candidates = {
            "python -c pass": lambda: wall_time([PYTHON, "-c", "pass"], env),
            "mirador --help": lambda: wall_time([MIRADOR, "--help"], env),
            "mirador --version": lambda: wall_time([MIRADOR, "--version"], env),
            "mirador ask --help": lambda: wall_time([MIRADOR, "ask", "--help"], env),
        }
        llm = which("llm")
        if llm:
            candidates["llm --help (peer)"] = lambda: wall_time([llm, "--help"], env)
        samples = interleaved(args.runs, candidates)
    base = median_ms(samples["python -c pass"])
    rows = [("command", "median ms", "x bare python")]
    for name, values in samples.items():
        rows.append((name, f"{median_ms(values):.1f}", f"{median_ms(values) / base:.2f}"))
    print_table(f"start-up, median of {args.runs} runs (target: mirador under 4x bare python)", rows)
    worst = max(median_ms(samples[n]) for n in ("mirador --help", "mirador --version")) / base
    print(f"\nresult: {'PASS' if worst < 4 else 'FAIL'} (worst ratio {worst:.2f})")
    return 0 if worst < 4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
