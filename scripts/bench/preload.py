"""Stage start latency of stages 2 and 3 in a three-stage `mirador ask`: no preload, preload (load only),
preload + prefix warm-up.

"Stage start latency" is the stage's time to first token as the client saw it
(from sending the stage's request to its first token: a cold stage waits for
its model's load here, a preloaded one for reading its prompt). Two servers, one run:
  - the scripted engine with a 2 s load time for every model (ttft 50 ms);
  - the embedded runtime (`mirador serve --engine llama_cpp`) with real loads of
    SmolLM2-135M under three names (copies of smollm2:135m, each loaded on its own).
Every run starts with every model unloaded; the three modes alternate
(MIRADOR_PRELOAD=0; MIRADOR_PRELOAD_PREFIX=0; both on). Target: at least 5x lower with preloading.
On the embedded runtime a breakdown follows (one in-process ask per mode, the server's own
figures): where stage 2/3's time to first token goes once the load is gone.
Then the synthetic month (scripts/bench/month.py): how often the model a question needs
is already warm, predictor (with and without the similar-questions feature) versus always
keeping the last model, with the share of predicted preloads wasted and the reliability table.
Run: .venv/bin/python scripts/bench/preload.py [--runs 5] [--skip-embedded] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from benchlib import MIRADOR, bench_env, print_table, scripted_server

SCRIPTED = {
    "s1:1b": {"text": " ".join(["quick"] * 30), "load_time": 2.0, "ttft": 0.05, "rate": 100},
    "s2:3b": {"text": " ".join(["analysis"] * 30), "load_time": 2.0, "ttft": 0.05, "rate": 100},
    "s3:8b": {"text": " ".join(["synthesis"] * 30), "load_time": 2.0, "ttft": 0.05, "rate": 100},
}
EMBEDDED = ["smollm2:135m", "smol-b:135m", "smol-c:135m"]


def unload_all(host: str) -> None:
    url = f"http://{host}"
    for model in httpx.get(url + "/api/ps", timeout=30).json().get("models") or []:
        httpx.post(url + "/api/generate", json={"model": model["name"], "keep_alive": 0}, timeout=60)
    deadline = time.monotonic() + 30
    while httpx.get(url + "/api/ps", timeout=30).json().get("models") and time.monotonic() < deadline:
        time.sleep(0.05)


MODES = {"none": ("0", "0"), "load": ("1", "0"), "prefix": ("1", "1")}  # MIRADOR_PRELOAD, _PREFIX
QUESTION = "Why is the sky blue?"


def one_ask(host: str, models: list[str], mode: str, extra: list[str],
            source: str | None = None) -> dict[int, tuple[float, float]]:
    """Stage number -> (time to first token, server's load_duration), in ms, of one cold ask;
    key 0: stage 1's whole answer (ms), which the warm-ups beside it may slow down.
    `source`: the ask runs that copy of the mirador package instead (PYTHONPATH)."""
    unload_all(host)
    with tempfile.TemporaryDirectory() as home:
        env = bench_env(home, host)
        if source:
            env["PYTHONPATH"] = source
        env["MIRADOR_POWER"] = "plugged"
        env["MIRADOR_PRELOAD"], env["MIRADOR_PRELOAD_PREFIX"] = MODES[mode]
        out = subprocess.run([MIRADOR, "ask", "--json", "--no-log", "--chain", ",".join(models), *extra,
                              QUESTION], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"mirador ask failed: {out.stderr}")
    ends = [json.loads(line) for line in out.stdout.splitlines() if '"stage_end"' in line]
    out = {e["stage"]: (e.get("ttft_ms") or 0.0, e.get("load_ms") or 0.0) for e in ends}
    out[0] = (next(e.get("total_ms") or 0.0 for e in ends if e["stage"] == 1), 0.0)
    return out


def measure(name: str, host: str, models: list[str], runs: int, extra: list[str],
            against: str | None = None) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The table's rows, and with `against` (another copy of the source), its load+prefix mode
    beside this tree's: interleaved in the same runs, so the machine's drift hits both alike."""
    runs_of = {mode: (mode, None) for mode in MODES}
    if against:
        runs_of["against"] = ("prefix", against)
    samples: dict[str, list[dict[int, tuple[float, float]]]] = {key: [] for key in runs_of}
    for _ in range(runs):
        for key, (mode, source) in runs_of.items():
            samples[key].append(one_ask(host, models, mode, extra, source))
    versus = []
    if against:
        for stage in (0, 2, 3):
            old, new = (statistics.median(s[stage][0] for s in samples[k]) for k in ("against", "prefix"))
            what = "stage 1's whole answer" if stage == 0 else f"stage {stage}'s time to first token"
            versus.append((f"{name}: {what}", f"{old:.0f} -> {new:.0f} ms", f"{new / old:.2f}"))
    rows = []
    for stage in (0, 1, 2, 3):
        ttft = {m: statistics.median(s[stage][0] for s in samples[m]) for m in MODES}
        load = {m: statistics.median(s[stage][1] for s in samples[m]) for m in MODES}
        what = f"stage {stage}" if stage else "stage 1's whole answer"
        rows.append((f"{name}: {what}", " -> ".join(f"{ttft[m]:.0f}" for m in MODES) + " ms",
                     f"{ttft['none'] / ttft['load']:.1f}x", f"{ttft['none'] / ttft['prefix']:.1f}x",
                     " / ".join(f"{load[m]:.0f}" for m in MODES) + " ms"))
    return rows, versus


def breakdown(host: str, models: list[str], num_predict: int) -> list[tuple[str, ...]]:
    """Where stages 2 and 3's time to first token goes, per mode: the server's own figures for one
    in-process ask (the chain executor and StagePreloader as `mirador ask` runs them)."""
    import asyncio

    from mirador.config import load_settings
    from mirador.predict.preload import StagePreloader
    from mirador.runtime.client import OllamaClient
    from mirador.stream.chain import ChainRequest, run_chain, stages_for
    from mirador.stream.events import StageFinished

    class Recording(OllamaClient):
        """Keeps every /api/chat's last chunk: the stages' and the warm-ups' (num_predict 1) stats."""

        finals: list[tuple[str, int, dict]] = []

        def chat(self, model, messages, **kw):
            stream = super().chat(model, messages, **kw)
            limit = (kw.get("options") or {}).get("num_predict")

            async def wrap():
                async for chunk in stream:
                    if chunk.get("done"):
                        self.finals.append((model, limit, chunk))
                    yield chunk
            return wrap()

    async def once(mode: str, settings) -> list[tuple[str, ...]]:
        unload_all(host)
        settings.values["preload"], settings.values["preload_prefix"] = mode != "none", mode == "prefix"
        request = ChainRequest(QUESTION, stages_for(models), lambda m: "10m", options={"num_predict": num_predict})
        out = []
        async with Recording(f"http://{host}") as client:
            preloader = StagePreloader(client, request.keep_alive, settings, "performance", request=request) \
                if mode != "none" else None
            if preloader is not None:
                preloader.ensure(models)
            try:
                async for event in run_chain(client, request):
                    if preloader is not None:
                        preloader.observe(event)
                    if not isinstance(event, StageFinished) or event.stage == 1:
                        continue
                    final = next(c for m, limit, c in reversed(client.finals) if m == event.model and limit != 1)
                    ms = {k: (final.get(k) or 0) / 1e6 for k in ("total_duration", "load_duration",
                                                                 "prompt_eval_duration", "eval_duration")}
                    queue = ms["total_duration"] - ms["load_duration"] - ms["prompt_eval_duration"] \
                        - ms["eval_duration"]
                    total = final.get("prompt_eval_count", 0)
                    warm = [w for m, limit, w in client.finals if m == event.model and limit == 1]
                    out.append((f"{mode}: stage {event.stage}", f"{event.stats.ttft_ms:.0f} ms",
                                f"{ms['load_duration']:.0f} ms", f"{max(0.0, queue):.0f} ms",
                                f"{total - final.get('prompt_eval_cached_count', 0)} of {total}",
                                f"{ms['prompt_eval_duration']:.0f} ms", str(len(warm))))
            finally:
                if preloader is not None:
                    await preloader.aclose()
        return out

    rows = [("mode: stage", "ttft (client)", "load", "queue", "prompt tokens read", "read + 1st token",
             "warm-ups done")]
    with tempfile.TemporaryDirectory() as home:
        os.environ["MIRADOR_HOME"], os.environ["MIRADOR_POWER"] = home, "plugged"
        settings = load_settings()
        for mode in MODES:
            rows += asyncio.run(once(mode, settings))
    return rows


@contextmanager
def embedded_server() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="mirador-bench-") as home:
        env = bench_env(home)
        proc = subprocess.Popen([MIRADOR, "serve", "--engine", "llama_cpp", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            line = proc.stdout.readline()
            if "listening on" not in line:
                raise SystemExit(f"the embedded server did not start: {line!r}")
            url = line.split("listening on ", 1)[1].split()[0]
            for copy in EMBEDDED[1:]:  # three names, three separate loads of real weights
                httpx.post(url + "/api/copy", json={"source": EMBEDDED[0], "destination": copy},
                           timeout=60).raise_for_status()
            yield url.removeprefix("http://")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def month_rows(seed: int) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], float, bool]:
    """The synthetic month: (hit-rate table, reliability table, calibration error, targets met).
    The targets are read on the plain month; the month with recurring topics (a weekly side
    project, a release workflow) is run without and with pattern memory's evidence (real MiniLM
    embeddings of the questions), and its reliability table is the one shown."""
    from month import simulate_keep_last, simulate_predictor, synthetic_month, with_vectors

    from mirador.predict.predictor import reliability

    uses = synthetic_month(seed)
    ours, cron, last = simulate_predictor(uses), simulate_predictor(uses, trigger="cron"), simulate_keep_last(uses)
    rows = [("policy", "needed model warm", "wasted preloads", "calibration error")]

    def row(name: str, outcome, ece: str = "") -> tuple[str, ...]:
        wasted = f"{outcome.waste:.1%} ({outcome.wasted} of {outcome.preloads})" if outcome.preloads else "-"
        return (name, f"{outcome.hit_rate:.1%}", wasted, ece)

    rows.append(row("keep the last model (baseline)", last))
    rows.append(row("predictor, shell hook + after each answer", ours, f"{reliability(uses)[1]:.3f}"))
    rows.append(row("predictor, hourly cron + after each answer", cron))
    recurring = synthetic_month(seed, recurring=True)
    remembered = with_vectors(recurring)
    rows.append(row("recurring topics: keep the last model", simulate_keep_last(recurring)))
    rows.append(row("recurring topics: predictor without memory", simulate_predictor(recurring),
                    f"{reliability(recurring)[1]:.3f}"))
    table, ece = reliability(remembered)
    rows.append(row("recurring topics: predictor with memory", simulate_predictor(remembered), f"{ece:.3f}"))
    calib = [("predicted", "mean predicted -> share needed", "pairs")]
    calib += [(f"{b.low:.1f}-{b.high:.1f}", f"{b.predicted:.2f} -> {b.observed:.2f}", str(b.count)) for b in table]
    return rows, calib, ece, ours.hit_rate >= 0.8 and ours.waste <= 0.2


def speculation_rows(runs: int) -> list[tuple[str, ...]]:
    """Speculation as `mirador ask` does it, with cold models: scripts/bench/speculation.py (which also
    has the warm case and `mirador ask` itself)."""
    from speculation import rows as speculation_table

    return speculation_table(runs, cold=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-embedded", action="store_true", help="only the scripted engine")
    parser.add_argument("--seed", type=int, default=7, help="of the synthetic month")
    parser.add_argument("--against", metavar="DIR", help="embedded runtime: also run load+prefix with the "
                        "mirador package in DIR (e.g. `git archive COMMIT mirador | tar -x -C DIR`)")
    args = parser.parse_args()
    month, calib, ece, month_ok = month_rows(args.seed)
    print_table(f"a synthetic month (seed {args.seed}), days 8-30 after a week of history "
                "(target: at least 80% warm, at most 20% wasted)", month)
    print_table(f"reliability with memory, recurring topics, held-out last quarter "
                f"(calibration error {ece:.3f})", calib)
    rows = [("stage", "time to first token: none -> load -> load+prefix", "load only", "load+prefix",
             "of which load (server)")]
    with scripted_server(SCRIPTED) as (host, _):
        rows += measure("scripted, 2 s load", host, list(SCRIPTED), args.runs, [])[0]
    parts: list[tuple[str, ...]] = []
    versus: list[tuple[str, ...]] = []
    if not args.skip_embedded:
        os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
        with embedded_server() as host:
            embedded, versus = measure("embedded, SmolLM2-135M", host, EMBEDDED, args.runs,
                                       ["-o", "num_predict=48"], args.against)
            rows += embedded
            parts = breakdown(host, EMBEDDED, 48)
    print_table(f"speculation: time to the chosen interpretation's first token, median of {args.runs} cold runs "
                "(the refined decision against deciding first, then starting)", speculation_rows(args.runs))
    print_table(f"stage start latency in a three-stage ask, median of {args.runs} cold runs (target: 5x)", rows)
    if parts:
        print_table("embedded runtime, stages 2 and 3 of one ask per mode: where the time to first token goes", parts)
    if versus:
        print_table(f"load+prefix, the source in {args.against} -> this tree (median of {args.runs}, same runs)",
                    [("what", "time", "ratio"), *versus])
    scripted = min(float(r[3].rstrip("x")) for r in rows[1:] if r[0].startswith("scripted")
                   and r[0].endswith(("stage 2", "stage 3")))
    ok = scripted >= 5 and month_ok
    print(f"\nresult: {'PASS' if ok else 'FAIL'} (scripted engine's lowest speed-up {scripted:.1f}x; "
          f"month {'met' if month_ok else 'missed'} its targets)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
