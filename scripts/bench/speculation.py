"""Speculation as `mirador ask` does it: time to the chosen interpretation's first token, and what it wastes.

The query ties on the fast path between financial analysis (stage 1 on
qwen2.5:1.5b) and summarization (stage 1 on llama3.2:1b); the refined
(embedding) classifier chooses summarization. Every model loads cold (1 s) on a
scripted server (a second table: every model already loaded). Each run is a
fresh process, from spawn to the chosen interpretation's first token, so the decision includes what a real `ask` pays
for it (numpy, the MiniLM weights, one embedding):
  - decide, then start: the router's refined decision first, then the winner's stage 1;
  - speculate: the wired path of `ask` (mirador.predict.ask_speculation.start): both
    first stages start at once, the decision keeps one and closes the other.
Both use the same router code. Also `mirador ask --json` itself, speculating and with
--no-speculate (which shows the fast path's interpretation at once, here not the chosen one).
Run: .venv/bin/python scripts/bench/speculation.py [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# httpx and benchlib are imported by the parent only: a child's start-up is part of what it measures.

QUERY = "summarize the stock market news for me"
LOAD_S = 1.0
MODELS = {
    "qwen2.5:1.5b": {"text": " ".join(["finance"] * 60), "load_time": LOAD_S, "ttft": 0.1, "rate": 50,
                     "parameter_size": "1.5B"},
    "llama3.2:1b": {"text": " ".join(["summary"] * 60), "load_time": LOAD_S, "ttft": 0.1, "rate": 50,
                    "parameter_size": "1.2B"},
    "llama3.1:8b": {"text": "the full summary", "load_time": LOAD_S, "parameter_size": "8.0B"},
}  # three: the scripted server keeps three loaded, so "warm" means all of them


async def _one(mode: str, spawned: float) -> dict:
    """In the child process: route, then speculate or decide-then-start; the first token's wall time."""
    from mirador.config import load_settings
    from mirador.predict.ask_speculation import choose, start
    from mirador.routing.live import LiveRouter
    from mirador.runtime.client import OllamaClient
    from mirador.stream.chain import ChainRequest, stage_messages, stage_options

    settings = load_settings()
    router = LiveRouter(settings, QUERY)
    request = ChainRequest(query=QUERY, stages=[], keep_alive=lambda model: "10m")
    async with OllamaClient(settings.host) as client:
        request.stages = await router.first_stages(client)
        wasted = 0
        if mode == "speculate":
            spec = await start(client, request, router, settings, None, True)
            assert spec is not None, "the query did not speculate"
            chat = spec.client.chat
        else:
            among, _ = choose(router.margin, router.interpretations, settings, None)
            winner, decided_by = await router.decide(client, among)
            request.stages = router.adopt(winner, decided_by)
            spec, chat = None, client.chat
        stage = request.stages[0]
        async for chunk in chat(stage.model, stage_messages(request, stage, [], None),
                                keep_alive="10m", options=stage_options(request, stage)):
            if (chunk.get("message") or {}).get("content"):
                first = time.time() - spawned
                break
        if spec is not None:
            wasted = spec.speculation.cost.wasted_tokens
            await spec.aclose()
    return {"first_s": first, "model": stage.model, "wasted": wasted}


def unload_all(host: str) -> None:
    import httpx

    url = f"http://{host}"
    for model in httpx.get(url + "/api/ps", timeout=30).json().get("models") or []:
        httpx.post(url + "/api/generate", json={"model": model["name"], "keep_alive": 0}, timeout=60)


def child(mode: str, env: dict[str, str]) -> dict:
    from benchlib import PYTHON

    env = {**env, "BENCH_SPAWNED": repr(time.time())}
    out = subprocess.run([PYTHON, __file__, "--child", mode], capture_output=True, text=True, env=env, timeout=120)
    if out.returncode != 0:
        raise SystemExit(f"the {mode} run failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def real_ask(env: dict[str, str], extra: list[str]) -> dict:
    """`mirador ask --json`: seconds from spawn to the first token event, and its model."""
    from benchlib import MIRADOR

    started = time.perf_counter()
    proc = subprocess.Popen([MIRADOR, "ask", "--json", "--no-log", *extra, QUERY], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env)
    first, model = None, None
    for line in proc.stdout:
        event = json.loads(line)
        if event.get("event") == "token" and first is None:
            first, model = time.perf_counter() - started, event["model"]
    proc.wait()
    return {"first_s": first, "model": model}


def warm_all(host: str) -> None:
    import httpx

    for model in MODELS:
        httpx.post(f"http://{host}/api/generate", json={"model": model, "keep_alive": "10m"}, timeout=60)


def rows(runs: int, cold: bool) -> list[tuple[str, ...]]:
    from benchlib import MIRADOR, bench_env, scripted_server

    samples: dict[str, list[dict]] = {"serial": [], "speculate": [], "ask": [], "ask-no-speculate": []}
    with scripted_server(MODELS) as (host, _), tempfile.TemporaryDirectory(prefix="mirador-spec-") as home:
        env = {**bench_env(home, host), "MIRADOR_POWER": "plugged",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
        subprocess.run([MIRADOR, "route", "--json", QUERY], env=env, capture_output=True, check=True)  # example bank
        for _ in range(runs):  # interleaved, every run cold
            for name in samples:
                unload_all(host) if cold else warm_all(host)
                if name in ("serial", "speculate"):
                    samples[name].append(child(name, env))
                else:
                    samples[name].append(real_ask(env, ["--no-speculate"] if name == "ask-no-speculate" else []))
    med = {name: statistics.median(s["first_s"] for s in runs_) * 1000 for name, runs_ in samples.items()}
    chosen = samples["serial"][0]["model"]
    wasted = statistics.median(s["wasted"] for s in samples["speculate"])

    def shown(name: str) -> str:
        models = {s["model"] for s in samples[name]}
        return ", ".join(sorted(models)) + ("" if models == {chosen} else f" (chosen: {chosen})")

    return [
        ("path", f"first token ({'cold' if cold else 'warm'})", "ratio", "interpretation shown"),
        ("decide, then start (baseline)", f"{med['serial']:.0f} ms", "1.00x", shown("serial")),
        ("speculate (ask's wired path)", f"{med['speculate']:.0f} ms", f"{med['serial'] / med['speculate']:.2f}x",
         shown("speculate") + f"; {wasted:.0f} tokens wasted (median)"),
        ("mirador ask --json", f"{med['ask']:.0f} ms", f"{med['serial'] / med['ask']:.2f}x", shown("ask")),
        ("mirador ask --json --no-speculate", f"{med['ask-no-speculate']:.0f} ms",
         f"{med['serial'] / med['ask-no-speculate']:.2f}x", shown("ask-no-speculate")),
    ]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", choices=("serial", "speculate"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_one(args.child, float(os.environ["BENCH_SPAWNED"])))))
        return 0
    from benchlib import print_table

    for cold in (True, False):
        state = f"cold ({LOAD_S:g} s loads)" if cold else "warm"
        print_table(f"speculation on a query the fast path cannot decide, models {state}, median of {args.runs} "
                    "(ratio: baseline / this; higher is faster)", rows(args.runs, cold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
