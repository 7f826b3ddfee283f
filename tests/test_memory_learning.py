"""The fast track: a rating changes the very next similar question's plan, against a real Chroma
store with real local embeddings (all-MiniLM-L6-v2 in NumPy), through the real `mirador` command."""

from __future__ import annotations

import json

from clirun import run_mirador
from memoryhelp import MODELS, chain_of, route_json, wait_observed

CODING = "fix the bug in my python function that sorts a list of dicts"
SIMILAR = "my python sort function has a bug, it crashes on a list of dicts: fix it"
UNRELATED = "write a short poem about the sea at night"


def chat_models(server) -> list[str]:
    return [r["body"]["model"] for r in server.requests() if r["path"] == "/api/chat"]


def test_two_bad_ratings_move_the_next_similar_question_to_another_model(server_factory, tmp_path):
    server = server_factory(MODELS)
    before = chain_of(route_json([SIMILAR], tmp_path, server.host))
    poem_before = chain_of(route_json([UNRELATED], tmp_path, server.host))
    x = before["implementation"]
    assert x == "qwen2.5-coder:7b"
    assert "llama3.1:8b" in poem_before.values()  # also answers in the code chain: it must stay here

    for prompt in (CODING, CODING + " please"):
        asked = run_mirador(["ask", prompt], tmp_path, server.host)
        assert asked.returncode == 0, asked.stderr
    assert x in chat_models(server)
    for args in (["2", "1"], ["1", "1", "--note", "wrong and slow"]):
        rated = run_mirador(["rate", *args, "--json"], tmp_path, server.host)
        assert rated.returncode == 0, rated.stderr
        result = json.loads(rated.stdout)
        assert result["memory"] is True and result["domain"] == "coding" and x in result["models"]

    # The patterns are in Chroma, embedded for real: the similar question finds both, rated 1.
    found = run_mirador(["memory", "search", "--json", SIMILAR], tmp_path, server.host)
    assert found.returncode == 0, found.stderr
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert {h["id"] for h in hits} == {1, 2} and all(h["rating"] == 1 for h in hits)
    assert all(h["similarity"] > 0.6 for h in hits)

    after = chain_of(route_json([SIMILAR], tmp_path, server.host))
    assert after["implementation"] != x and after["implementation"] == "deepseek-coder:6.7b"
    assert chain_of(route_json([UNRELATED], tmp_path, server.host)) == poem_before

    # ... and `ask` answers the next similar question with the other model, at once.
    del_before = len(chat_models(server))
    asked = run_mirador(["ask", SIMILAR], tmp_path, server.host)
    assert asked.returncode == 0, asked.stderr
    answered_by = chat_models(server)[del_before:]
    assert x not in answered_by[:2] and "deepseek-coder:6.7b" in answered_by
    wait_observed(tmp_path, 3)  # the ask's detached sync observed it too

    stats = run_mirador(["memory", "stats", "--json"], tmp_path, server.host)
    report = json.loads(stats.stdout)
    assert report["patterns"] == 3 and report["rated"] == 2
    scores = {(s["domain"], s["model"]): s["score"] for s in report["scores"]}
    assert scores[("coding", x)] < 0.5 and ("creative_writing", "llama3.1:8b") not in scores


def test_good_ratings_keep_a_model_and_are_offered_as_examples(server_factory, tmp_path):
    server = server_factory(MODELS)
    asked = run_mirador(["ask", CODING], tmp_path, server.host)
    assert asked.returncode == 0, asked.stderr
    rated = run_mirador(["rate", "5", "--note", "short and with a test"], tmp_path, server.host)
    assert rated.returncode == 0, rated.stderr and "rated #1: 5/5" in rated.stdout
    assert chain_of(route_json([SIMILAR], tmp_path, server.host))["implementation"] == "qwen2.5-coder:7b"
    start = len(server.requests())
    asked = run_mirador(["ask", SIMILAR], tmp_path, server.host)
    assert asked.returncode == 0, asked.stderr
    later = [r["body"] for r in server.requests()[start:] if r["path"] == "/api/chat"][1:]
    systems = " ".join(m["content"] for body in later for m in body["messages"] if m["role"] == "system")
    assert "short and with a test" in systems and CODING in systems  # the liked exchange, as an example
    wait_observed(tmp_path, 2)
