"""Speculation inside `mirador ask`, end to end: real `mirador ask` processes against real scripted servers.

"summarize the stock market news for me" ties on the fast path between financial analysis (stage 1
on qwen2.5:1.5b) and summarization (stage 1 on llama3.2:1b); the refined (embedding) classifier
says summarization. "what is the capital of France?" is clear.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
from clirun import run_mirador

pytest.importorskip("mirador.memory.embed")

AMBIGUOUS = "summarize the stock market news for me"
CLEAR = "what is the capital of France?"
LOSER_RATE = 5.0  # tokens/s: a stage-1 answer capped at 96 tokens takes ~19 s, far past any decision
STAGE1_CAP = 96  # the quick acknowledgment's num_predict (mirador.stream.chain.QUICK_ACK_MAX_TOKENS)


def install(loser_done_quickly: bool = False) -> dict:
    qwen = {"text": "done", "parameter_size": "1.5B"} if loser_done_quickly else \
        {"num_tokens": 2000, "rate": LOSER_RATE, "parameter_size": "1.5B"}
    return {
        "qwen2.5:1.5b": qwen,
        "llama3.2:1b": {"text": "[llama3.2:1b] the market in brief.", "parameter_size": "1.2B", "rate": 50},
        "llama3.1:8b": {"text": "[llama3.1:8b] the full summary.", "parameter_size": "8.0B"},
        "qwen2.5:7b": {"text": "[qwen2.5:7b] the analysis.", "parameter_size": "7.6B"},
    }


def chats(server) -> list[str]:
    return [r["body"]["model"] for r in server.requests() if r["path"] == "/api/chat"]


def history(home: Path, sql: str) -> list[sqlite3.Row]:
    db = sqlite3.connect(home / "data" / "history.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def warm_routing(home: Path, host: str) -> None:
    """Embed the routing examples once (cached in the data dir), as any earlier `route` or `ask` would."""
    result = run_mirador(["route", "--json", "hello there"], home, host)
    assert result.returncode == 0, result.stderr


def first_token_s(url: str, model: str) -> float:
    started = time.perf_counter()
    with httpx.stream("POST", url + "/api/chat", json={"model": model, "messages": [
            {"role": "user", "content": "next"}], "options": {"num_predict": 1}}, timeout=60) as response:
        for line in response.iter_lines():
            if line and json.loads(line).get("message", {}).get("content"):
                break
    return time.perf_counter() - started


def test_an_ambiguous_query_starts_two_streams_and_keeps_the_refined_choice(server_factory, tmp_path):
    server = server_factory(install())
    warm_routing(tmp_path, server.host)
    started = time.perf_counter()
    result = run_mirador(["ask", AMBIGUOUS], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    # The loser would still be generating now, had its stream not been closed: a new request to its
    # model would queue behind the rest of its answer. It gets its first token at once.
    left_s = STAGE1_CAP / LOSER_RATE - (time.perf_counter() - started)
    wait = first_token_s(server.url, "qwen2.5:1.5b")
    assert left_s > 4 and wait < left_s / 4, (wait, left_s)
    first_two = chats(server)[:2]
    assert sorted(first_two) == ["llama3.2:1b", "qwen2.5:1.5b"]  # both stage-1 models, at once
    (spec,) = history(tmp_path, "SELECT * FROM speculations")
    candidates = {c["model"]: c for c in json.loads(spec["candidates_json"])}
    assert set(candidates) == {"llama3.2:1b", "qwen2.5:1.5b"}
    if spec["decided_by"].startswith("local:"):  # the embedding decided, as it should on any but a stalled box
        assert spec["winner"] == "llama3.2:1b"
    loser = next(m for m in candidates if m != spec["winner"])
    assert candidates[spec["winner"]]["outcome"] == "winner" and candidates[loser]["outcome"] == "cancelled"
    assert 0 < spec["wasted_tokens"] == candidates[loser]["tokens"]
    assert spec["wasted_seconds"] > 0 and spec["wasted_energy_j"] > 0
    stages = history(tmp_path, "SELECT model, text FROM stages ORDER BY idx")
    assert stages[0]["model"] == spec["winner"]
    if spec["winner"] == "llama3.2:1b":
        assert "[llama3.2:1b] the market in brief." in result.stdout and "lorem" not in result.stdout
        assert stages[1]["model"] == "llama3.1:8b"  # stages 2..n follow the winner's (summarization's) plan
    # Each interpretation's stage 1 was asked for once: the winner's stream was adopted, not repeated.
    assert chats(server).count(spec["winner"]) == 1 + [s["model"] for s in stages[1:]].count(spec["winner"])
    shown = run_mirador(["history", "show", "last"], tmp_path)
    assert "2 first stages started together" in shown.stdout and f"{loser}" in shown.stdout
    assert "wasted:" in shown.stdout


def test_a_clear_query_starts_one_stream(server_factory, tmp_path):
    server = server_factory(install())
    result = run_mirador(["ask", CLEAR], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    assert chats(server)[0] == "llama3.2:1b" and "qwen2.5:1.5b" not in chats(server)
    assert history(tmp_path, "SELECT * FROM speculations") == []


@pytest.mark.parametrize("power", ["battery:15", "battery:35"])  # survival; balanced but below 50%
def test_no_speculation_in_survival_or_on_a_low_battery(server_factory, tmp_path, power):
    server = server_factory(install())
    result = run_mirador(["ask", AMBIGUOUS], tmp_path, server.host, MIRADOR_POWER=power)
    assert result.returncode == 0, result.stderr
    # The energy profile may pick other models: whichever they are, one request per stage, no more.
    stages = history(tmp_path, "SELECT model FROM stages ORDER BY idx")
    assert chats(server) == [s["model"] for s in stages]
    assert history(tmp_path, "SELECT * FROM speculations") == []


def test_no_speculate_flag_and_setting(server_factory, tmp_path):
    server = server_factory(install(loser_done_quickly=True))
    assert run_mirador(["ask", "--no-speculate", AMBIGUOUS], tmp_path, server.host).returncode == 0
    assert run_mirador(["ask", AMBIGUOUS], tmp_path, server.host, MIRADOR_SPECULATE="0").returncode == 0
    first = [m for m in chats(server) if m in ("qwen2.5:1.5b", "llama3.2:1b")]
    assert len(first) == 2 and history(tmp_path, "SELECT * FROM speculations") == []  # one stream per ask


def test_interpretations_on_one_stage_one_model_start_one_stream(server_factory, tmp_path):
    # Only the 1B model is installed for the quick steps: both interpretations would start on it.
    models = install()
    del models["qwen2.5:1.5b"]
    server = server_factory(models)
    explained = run_mirador(["route", "--explain", AMBIGUOUS], tmp_path, server.host)
    assert explained.returncode == 0, explained.stderr
    assert "would not speculate" in explained.stdout and "same model" in explained.stdout
    result = run_mirador(["ask", AMBIGUOUS], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    assert chats(server).count("llama3.2:1b") == 1 and history(tmp_path, "SELECT * FROM speculations") == []


def test_a_loser_whose_server_already_finished_is_no_error(server_factory, tmp_path):
    server = server_factory(install(loser_done_quickly=True))
    warm_routing(tmp_path, server.host)
    result = run_mirador(["ask", AMBIGUOUS], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    (spec,) = history(tmp_path, "SELECT * FROM speculations")
    outcomes = {c["model"]: c["outcome"] for c in json.loads(spec["candidates_json"])}
    if spec["winner"] == "llama3.2:1b":
        assert outcomes["qwen2.5:1.5b"] == "finished" and spec["wasted_tokens"] == 1  # "done": its only token
    assert "error" not in result.stderr.lower()


def test_route_explain_shows_the_interpretations(server_factory, tmp_path):
    server = server_factory(install())
    explained = run_mirador(["route", "--explain", AMBIGUOUS], tmp_path, server.host)
    assert explained.returncode == 0, explained.stderr
    assert "interpretations" in explained.stdout and "margin between the best two 0.00" in explained.stdout
    assert "ask would start 2 first stages together" in explained.stdout
    report = json.loads(run_mirador(["route", "--json", CLEAR], tmp_path, server.host).stdout)
    assert report["speculation"]["would_speculate"] is False and "sure enough" in report["speculation"]["why_not"]


def test_no_speculation_before_the_example_vectors_are_cached(server_factory, tmp_path):
    # A fresh install would make the user wait seconds for the refined decision (every example embedded
    # once): the fast path's plan answers, and the bank is built for the next time by `route`.
    server = server_factory(install(loser_done_quickly=True))
    assert run_mirador(["ask", AMBIGUOUS], tmp_path, server.host).returncode == 0
    assert history(tmp_path, "SELECT * FROM speculations") == []
    warm_routing(tmp_path, server.host)
    assert run_mirador(["ask", AMBIGUOUS], tmp_path, server.host).returncode == 0
    assert len(history(tmp_path, "SELECT * FROM speculations")) == 1
