"""`mirador serve` with real inference: llama.cpp running SmolLM2-135M-Instruct, through real HTTP clients.

Every answer here comes from the real model; num_predict stays small so the file runs in
about a minute on two cores. Greedy decoding (temperature 0) makes the answers stable.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from ggufwriter import write_smollm2_lora
from llamaproc import smollm2_gguf, start_llama_server
from serverproc import REPO, ServerProcess

MODEL = "smollm2:135m"
FRANCE = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 16}
DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One server for the tests that leave the store as they found it."""
    server = start_llama_server(tmp_path_factory.mktemp("llama"))
    yield server
    assert server.stop() == 0, server.stderr()


def post(server: ServerProcess, path: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=timeout)


def stream_lines(server: ServerProcess, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as response:
        assert response.status_code == 200
        return [json.loads(line) for line in response.iter_lines() if line.strip()]


def chat(server: ServerProcess, messages: list[dict[str, Any]], model: str = MODEL, **options: Any) -> dict:
    response = post(server, "/api/chat", {"model": model, "messages": messages, "stream": False,
                                          "options": {**GREEDY, **options}})
    assert response.status_code == 200, response.text
    return response.json()


# -- answers and statistics -----------------------------------------------------------------------


def test_chat_answers_with_real_text_and_real_statistics(llama):
    answer = chat(llama, FRANCE)
    assert "Paris" in answer["message"]["content"]
    assert answer["done_reason"] == "stop" and answer["message"]["role"] == "assistant"
    assert answer["prompt_eval_count"] >= 20 and 3 <= answer["eval_count"] < 16
    assert all(answer[key] > 0 for key in DURATIONS if key != "load_duration")
    assert answer["total_duration"] >= answer["prompt_eval_duration"] + answer["eval_duration"]
    again = chat(llama, FRANCE)  # warm now: nothing to load, and the prompt prefix is reused
    assert again["load_duration"] == 0 and again["message"] == answer["message"]


def test_generate_streams_token_chunks_and_stops_at_num_predict(llama):
    lines = stream_lines(llama, "/api/generate", {"model": MODEL, "prompt": "Count from one to twenty.",
                                                  "options": {"temperature": 0, "num_predict": 6}})
    chunks, last = lines[:-1], lines[-1]
    assert 1 <= len(chunks) <= 6 and all(set(c) == {"model", "created_at", "response", "done"} for c in chunks)
    assert all(c["response"] for c in chunks)  # a token that ends mid-character sends nothing
    assert last["done"] is True and last["done_reason"] == "length" and last["eval_count"] == 6
    assert last["response"] == "" and "".join(c["response"] for c in chunks).strip()


def test_characters_split_across_tokens_arrive_whole(llama):
    # SmolLM2 spells an emoji as several byte tokens: naive per-token decoding would send U+FFFD.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Reply with three emojis."}],
            "options": {"temperature": 0, "num_predict": 12}}
    lines = stream_lines(llama, "/api/chat", body)
    pieces = [line["message"]["content"] for line in lines[:-1]]
    assert lines[-1]["eval_count"] == 12 and len(pieces) < 12  # tokens that end mid-character send nothing
    assert "\N{GLOWING STAR}" in "".join(pieces) and not any("\ufffd" in p for p in pieces)


def test_stop_sequences_end_the_answer_before_them(llama):
    answer = chat(llama, FRANCE, stop=["Paris"])
    assert answer["done_reason"] == "stop" and "Paris" not in answer["message"]["content"]
    assert answer["message"]["content"].startswith("The capital of France is")


def test_sampling_with_a_seed_is_reproducible(llama):
    poem = [{"role": "user", "content": "Write one line about the sea."}]
    first = chat(llama, poem, temperature=1.0, seed=1234, num_predict=12)["message"]["content"]
    assert chat(llama, poem, temperature=1.0, seed=1234, num_predict=12)["message"]["content"] == first
    others = {chat(llama, poem, temperature=1.0, seed=seed, num_predict=12)["message"]["content"] for seed in (1, 2)}
    assert others != {first}


def test_a_prompt_longer_than_the_context_is_truncated_keeping_its_head(llama):
    prompt = "Remember this. " * 600 + "What is the capital of France?"
    answer = post(llama, "/api/generate", {"model": MODEL, "prompt": prompt, "system": "You are a helpful assistant.",
                                           "stream": False, "options": {"num_ctx": 256, "num_predict": 4,
                                                                        "temperature": 0}}).json()
    assert answer["done"] is True and answer["eval_count"] >= 1
    assert 200 <= answer["prompt_eval_count"] <= 256 - 4


def test_a_chat_longer_than_the_context_loses_its_oldest_turns_first(llama):
    filler = "Tell me everything about the history of shipbuilding in great detail, please. " * 8
    turns = [{"role": role, "content": filler} for _ in range(6) for role in ("user", "assistant")]
    short = chat(llama, FRANCE)
    long = chat(llama, [FRANCE[0], *turns, FRANCE[1]], num_ctx=128)
    # Every old turn is gone; the system message and the question stay: the very same prompt.
    assert long["prompt_eval_count"] == short["prompt_eval_count"] and long["message"] == short["message"]


def test_embed_returns_unit_vectors_of_the_models_width(llama):
    body = post(llama, "/api/embed", {"model": MODEL, "input": ["the cat sat", "the cat sat", "stock markets"]})
    assert body.status_code == 200, body.text
    first, same, other = body.json()["embeddings"]
    assert len(first) == 576 and first == same  # SmolLM2-135M's embedding_length
    assert math.isclose(sum(x * x for x in first), 1.0, rel_tol=1e-6)
    assert sum(a * b for a, b in zip(first, other, strict=True)) < 0.999


def test_keep_alive_zero_unloads_and_ps_shows_loaded_models(llama):
    chat(llama, FRANCE, num_predict=1)
    [running] = httpx.get(llama.url + "/api/ps").json()["models"]
    assert running["name"] == MODEL and running["context_length"] == 4096
    assert running["details"]["quantization_level"] == "Q4_1" and running["size"] == smollm2_gguf().stat().st_size
    unloaded = post(llama, "/api/generate", {"model": MODEL, "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload" and httpx.get(llama.url + "/api/ps").json()["models"] == []
    reloaded = chat(llama, FRANCE, num_predict=1)
    assert reloaded["load_duration"] > 0


def test_a_bigger_num_ctx_reloads_the_model_with_it(llama):
    chat(llama, FRANCE, num_predict=1, num_ctx=6144)
    [running] = httpx.get(llama.url + "/api/ps").json()["models"]
    assert running["context_length"] == 6144


# -- the official ollama client -------------------------------------------------------------------


def test_official_ollama_client_works_unchanged(llama):
    client = ollama.Client(host=llama.url)
    chunks = list(client.chat(model=MODEL, messages=FRANCE, stream=True, options=GREEDY))
    assert "Paris" in "".join(c.message.content for c in chunks) and chunks[-1].done
    assert chunks[-1].eval_count >= 3 and chunks[-1].eval_duration > 0
    generated = client.generate(model=MODEL, prompt="Say hello.", options={"num_predict": 5, "temperature": 0})
    assert generated.response and generated.done_reason in ("stop", "length")
    assert len(client.embed(model=MODEL, input="hello").embeddings[0]) == 576
    assert MODEL in [m.model for m in client.list().models]
    assert MODEL in [m.model for m in client.ps().models]
    shown = client.show(MODEL)
    assert shown.details.family == "llama" and shown.details.parameter_size == "135M"
    assert shown.modelinfo["llama.context_length"] == 8192 and "<|im_start|>" in shown.template


# -- concurrency, disconnects, shutdown ------------------------------------------------------------


def test_a_client_leaving_mid_stream_frees_the_model_at_once(llama):
    body = {"model": MODEL, "prompt": "Tell me a very long story.", "options": {"num_predict": 5000}}
    with httpx.stream("POST", llama.url + "/api/generate", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    started = time.monotonic()  # 5000 tokens would take a minute if generation went on
    answer = chat(llama, FRANCE, num_predict=4)
    assert answer["done"] and time.monotonic() - started < 5


def test_two_clients_at_once_take_turns_and_both_finish(llama):
    alone = chat(llama, FRANCE)["message"]["content"]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: chat(llama, FRANCE), range(2)))
    assert [a["message"]["content"] for a in answers] == [alone, alone]  # no interference between them


def test_sigterm_during_a_real_stream_ends_it_cleanly_and_exits_0(tmp_path):
    server = start_llama_server(tmp_path)
    lines: list[dict[str, Any]] = []
    body = {"model": MODEL, "prompt": "Tell me a very long story.", "options": {"num_predict": 5000}}

    def read() -> None:
        with httpx.stream("POST", server.url + "/api/generate", json=body, timeout=60) as response:
            for line in response.iter_lines():
                lines.append(json.loads(line))

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 30
    while len(lines) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stop(timeout=15) == 0, server.stderr()
    reader.join(10)
    assert lines[-1] == {"error": "server is shutting down"} and "Traceback" not in server.stderr()


# -- model management -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second server, whose store the tests below change."""
    server = start_llama_server(tmp_path_factory.mktemp("llama-store"))
    yield server
    assert server.stop() == 0, server.stderr()


GEOGRAPHER = "You are a helpful assistant who answers geography questions in one sentence."


def test_create_with_a_system_prompt_then_chat_show_and_delete(store_server):
    client = ollama.Client(host=store_server.url)
    statuses = [s.status for s in client.create(model="helper", from_=MODEL, system=GEOGRAPHER,
                                                 parameters={"temperature": 0, "num_predict": 16}, stream=True)]
    assert statuses[-1] == "success" and "writing manifest" in statuses
    shown = post(store_server, "/api/show", {"model": "helper"}).json()
    assert shown["system"] == GEOGRAPHER and f'SYSTEM """{GEOGRAPHER}"""' in shown["modelfile"]
    assert "temperature" in shown["parameters"] and shown["details"]["parent_model"] == f"{MODEL}"
    # The built-in model carries the system prompt its model card recommends.
    assert post(store_server, "/api/show", {"model": MODEL}).json()["system"] == FRANCE[0]["content"]
    # The system prompt is applied: the same prompt as the base model given it explicitly.
    answer = chat(store_server, FRANCE[1:], model="helper")
    explicit = chat(store_server, [{"role": "system", "content": GEOGRAPHER}, FRANCE[1]])
    base_default = chat(store_server, FRANCE[1:])
    assert "Paris" in answer["message"]["content"]
    assert answer["prompt_eval_count"] == explicit["prompt_eval_count"] != base_default["prompt_eval_count"]
    assert client.copy("helper", "helper-copy:v2").status == "success"
    tags = {m.model: m for m in client.list().models}
    assert tags["helper:latest"].digest != tags[MODEL].digest
    assert tags["helper-copy:v2"].digest == tags["helper:latest"].digest  # the same layers, as in Ollama
    client.delete("helper-copy:v2")
    listed = subprocess.run([sys.executable, "-m", "mirador", "serve", "models", "--json"], capture_output=True,
                            text=True, cwd=REPO, env=_env_of(store_server), timeout=30)
    rows = {row["name"]: row for row in map(json.loads, listed.stdout.splitlines())}
    assert rows["helper:latest"]["system"] == GEOGRAPHER and rows[MODEL]["family"] == "llama"
    table = subprocess.run([sys.executable, "-m", "mirador", "serve", "models"], capture_output=True, text=True,
                           cwd=REPO, env=_env_of(store_server), timeout=30).stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "FAMILY", "PARAMS", "QUANT", "ADAPTER", "PATH"]
    assert any(line.split()[:7] == ["helper:latest", "98.4", "MB", "llama", "135M", "Q4_1", "-"] for line in table)
    assert client.delete("helper").status == "success"
    assert "helper:latest" not in [m.model for m in client.list().models]
    assert post(store_server, "/api/chat", {"model": "helper", "messages": FRANCE}).status_code == 404
    assert httpx.request("DELETE", store_server.url + "/api/delete", json={"model": "helper"}).status_code == 404


def test_create_from_an_uploaded_blob_and_from_a_legacy_modelfile(store_server, tmp_path):
    client = ollama.Client(host=store_server.url)
    digest = client.create_blob(smollm2_gguf())
    assert httpx.head(f"{store_server.url}/api/blobs/{digest}").status_code == 200
    assert client.create(model="imported:v1", files={"model.gguf": digest}).status == "success"
    assert chat(store_server, FRANCE, model="imported:v1")["message"]["content"]
    wrong = httpx.post(f"{store_server.url}/api/blobs/sha256:{'0' * 64}", content=b"not what was promised")
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]
    modelfile = f'FROM {MODEL}\nSYSTEM """You are a helpful assistant."""\nPARAMETER stop "Paris"\n'
    assert post(store_server, "/api/create", {"model": "legacy", "modelfile": modelfile}).status_code == 200
    answer = chat(store_server, FRANCE[1:], model="legacy")
    assert answer["message"]["content"].startswith("The capital of France is") and "Paris" not in str(answer)
    client.delete("imported:v1")
    client.delete("legacy")


def test_a_lora_adapter_is_uploaded_applied_and_shown(store_server, tmp_path):
    client = ollama.Client(host=store_server.url)
    digest = client.create_blob(write_smollm2_lora(tmp_path / "adapter.gguf"))
    assert client.create(model="tuned", from_=MODEL, adapters={"adapter.gguf": digest}).status == "success"
    adapter_line = [line for line in client.show("tuned").modelfile.splitlines() if line.startswith("ADAPTER ")]
    assert len(adapter_line) == 1 and adapter_line[0].endswith(digest.replace(":", "-"))  # the uploaded blob
    base, tuned = chat(store_server, FRANCE)["message"]["content"], chat(store_server, FRANCE, model="tuned")
    assert "Paris" in base and tuned["message"]["content"] != base  # the adapter really changes the weights
    client.delete("tuned")
    assert httpx.head(f"{store_server.url}/api/blobs/{digest}").status_code == 404  # its blob went with it


def test_files_that_are_not_gguf_are_refused_at_create(store_server, tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("hello, I am not a model")
    truncated = tmp_path / "half.gguf"
    with smollm2_gguf().open("rb") as f:
        truncated.write_bytes(f.read(2_000_000))
    for path, why in ((text, "does not start with the GGUF magic"), (truncated, "truncated")):
        refused = post(store_server, "/api/create", {"model": "broken", "from": str(path)})
        assert refused.status_code == 400 and "is not a GGUF file" in refused.json()["error"]
        assert why in refused.json()["error"]
    adapter = post(store_server, "/api/create", {"model": "broken", "modelfile": f"FROM {MODEL}\nADAPTER {text}"})
    assert adapter.status_code == 400 and "not a GGUF file" in adapter.json()["error"]
    go = post(store_server, "/api/create", {"model": "broken", "from": MODEL, "template": "{{ .Prompt }}"})
    assert go.status_code == 400 and "Go template" in go.json()["error"]
    assert post(store_server, "/api/create", {"model": "broken", "from": "nope:7b"}).status_code == 404


def test_a_model_whose_file_breaks_fails_alone_and_the_server_serves_on(store_server, tmp_path):
    copy = tmp_path / "smollm2-copy.gguf"
    shutil.copyfile(smollm2_gguf(), copy)
    created = post(store_server, "/api/create", {"model": "fragile", "from": str(copy), "stream": False})
    assert created.status_code == 200 and created.json() == {"status": "success"}
    with copy.open("r+b") as f:
        f.truncate(copy.stat().st_size // 2)
    failed = post(store_server, "/api/chat", {"model": "fragile", "messages": FRANCE, "stream": False})
    assert failed.status_code == 500 and "truncated" in failed.json()["error"]
    assert "Paris" in chat(store_server, FRANCE)["message"]["content"]
    httpx.request("DELETE", store_server.url + "/api/delete", json={"model": "fragile"})


def test_a_malicious_chat_template_is_refused_not_run(store_server, tmp_path):
    marker = tmp_path / "pwned"
    template = ("{{ cycler.__init__.__globals__.os.popen('touch " + str(marker) + "').read() }}"
                "{% for m in messages %}{{ m.content }}{% endfor %}")
    assert post(store_server, "/api/create", {"model": "evil", "from": MODEL, "template": template}).status_code == 200
    refused = post(store_server, "/api/chat", {"model": "evil", "messages": FRANCE, "stream": False})
    assert refused.status_code == 500 and "refused" in refused.json()["error"]
    assert "unsafe" in refused.json()["error"] and not marker.exists()
    streamed = stream_lines(store_server, "/api/generate", {"model": "evil", "prompt": "hi"})
    assert "refused" in streamed[-1]["error"] and not marker.exists()
    httpx.request("DELETE", store_server.url + "/api/delete", json={"model": "evil"})


def test_pull_provides_only_what_works_offline(store_server):
    client = ollama.Client(host=store_server.url)
    with pytest.raises(ollama.ResponseError) as refused:
        client.pull("llama3.2:1b")
    assert refused.value.status_code == 404 and "offline" in str(refused.value)
    assert client.delete(MODEL).status == "success" and MODEL not in [m.model for m in client.list().models]
    statuses = [p.status for p in client.pull(MODEL, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert MODEL in [m.model for m in client.list().models]


def _env_of(server: ServerProcess) -> dict[str, str]:
    import os

    home = Path(server.log_file).parent / "home"
    return {**os.environ, "MIRADOR_HOME": str(home), "PYTHONPATH": str(REPO)}


def test_the_scripted_engine_refuses_store_changes(scripted_server):
    refused = httpx.post(scripted_server.url + "/api/create", json={"model": "x", "from": "fast:1b"})
    assert refused.status_code == 400 and "scripted engine" in refused.json()["error"]
