"""Third-party clients, unchanged, against a real `mirador serve` (llama.cpp, SmolLM2-135M-Instruct).

The `llm` CLI with its llm-ollama plugin, LangChain's langchain-ollama, and what the
official `ollama` package does beyond tests/test_llama_engine.py (its async client, the
legacy embeddings call, preload and unload through keep_alive). Every answer comes from
the real model, greedy (temperature 0), so "Paris" is a stable answer; num_predict stays
small so the file runs in well under a minute on two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ollama
import pytest
from langchain_ollama import ChatOllama, OllamaEmbeddings, OllamaLLM
from llamaproc import start_llama_server
from serverproc import ServerProcess

MODEL = "smollm2:135m"
QUESTION = "What is the capital of France?"
GREEDY = {"temperature": 0, "num_predict": 16}
LLM = str(Path(sys.executable).with_name("llm"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = start_llama_server(tmp_path_factory.mktemp("clients"))
    yield server
    assert server.stop() == 0, server.stderr()


# -- the llm CLI with llm-ollama ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm_cli(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """run(*args) -> CompletedProcess of `llm`, pointed at the server, with its own user dir
    (keys, logs.db, llm-ollama's capability cache) so the real ~/.config/io.datasette.llm stays untouched."""
    user_dir = tmp_path_factory.mktemp("llm-user")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "LLM_"))}
    env.update(OLLAMA_HOST=server.host, LLM_USER_PATH=str(user_dir))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([LLM, *args], capture_output=True, text=True, env=env, timeout=60,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == 0, f"llm {args}: {done.stderr}\n{server.stderr()}"
        return done

    return run


@pytest.fixture(scope="module")
def llm_model_id(llm_cli: Any) -> str:
    """The id llm-ollama registered the model under, read from `llm models`: recent releases
    say "ollama/smollm2:135m", older ones "smollm2:135m". Registration itself needs /api/tags
    and the "completion" capability from /api/show."""
    listed = llm_cli("models").stdout
    found = re.search(r"^Ollama: (\S*" + re.escape(MODEL) + r")\b", listed, re.MULTILINE)
    assert found, f"llm-ollama did not register {MODEL}:\n{listed}"
    return found.group(1)


def test_llm_cli_answers_through_llm_ollama_streamed_and_whole(llm_cli, llm_model_id):
    streamed = llm_cli("-m", llm_model_id, "-o", "temperature", "0", "-o", "num_predict", "16", QUESTION).stdout
    assert "Paris" in streamed
    whole = llm_cli("-m", llm_model_id, "--no-stream", "-o", "temperature", "0", "-o", "num_predict", "16",
                    QUESTION).stdout
    assert whole == streamed  # greedy: the non-streaming path gets the very same answer
    # llm-ollama reads the token counts from the last chunk's statistics into llm's log.
    logged = json.loads(llm_cli("logs", "--json", "-n", "2").stdout)
    assert [entry["response"] for entry in logged] == [streamed.strip()] * 2
    assert all(e["input_tokens"] >= 20 and 3 <= e["output_tokens"] < 16 for e in logged)
    assert logged[-1]["response_json"]["done_reason"] == "stop"


def test_llm_cli_embeds_through_llm_ollama(llm_cli, llm_model_id):
    # The "embedding" capability in /api/show makes llm-ollama register the model for `llm embed` too.
    vector = json.loads(llm_cli("embed", "-m", llm_model_id, "-c", "the cat sat").stdout)
    assert len(vector) == 576 and abs(sum(x * x for x in vector) - 1) < 1e-4


# -- LangChain ------------------------------------------------------------------------------------


def test_langchain_chat_ollama_streams_token_by_token_and_invokes(server):
    chat = ChatOllama(model=MODEL, base_url=server.url, temperature=0, num_predict=16, validate_model_on_init=True)
    arrivals: list[tuple[float, str]] = []
    last = None
    for chunk in chat.stream(QUESTION):
        arrivals.append((time.monotonic(), chunk.content))
        last = chunk if chunk.usage_metadata else last
    texts = [(t, text) for t, text in arrivals if text]
    answer = "".join(text for _, text in texts)
    assert "Paris" in answer
    assert last is not None and last.usage_metadata["output_tokens"] == len(texts)  # one chunk per token
    assert last.response_metadata["done_reason"] == "stop" and last.response_metadata["model_name"] == MODEL
    # Chunks come as the model makes them, not all at once at the end: their arrivals span a
    # good part of the time the server spent generating (loosely: a busy machine may delay the reader).
    spread = texts[-1][0] - texts[0][0]
    assert spread >= 0.25 * last.response_metadata["eval_duration"] / 1e9
    invoked = chat.invoke(QUESTION)
    assert invoked.content == answer and invoked.usage_metadata["input_tokens"] >= 20


def test_langchain_async_stream_llm_and_embeddings(server):
    chat = ChatOllama(model=MODEL, base_url=server.url, temperature=0, num_predict=16)

    async def collect() -> list[str]:
        return [chunk.content async for chunk in chat.astream(QUESTION)]

    assert "Paris" in "".join(asyncio.run(collect()))
    completion = OllamaLLM(model=MODEL, base_url=server.url, temperature=0, num_predict=16)  # /api/generate
    assert "Paris" in completion.invoke(QUESTION)
    embeddings = OllamaEmbeddings(model=MODEL, base_url=server.url)
    first, other = embeddings.embed_documents(["the cat sat", "stock markets"])
    assert len(first) == len(embeddings.embed_query("the cat sat")) == 576 and first != other


# -- the official ollama package: what test_llama_engine.py does not cover ------------------------


def test_ollama_async_client_streams_chat_and_generate(server):
    async def run() -> tuple[list[Any], list[Any]]:
        client = ollama.AsyncClient(host=server.url)
        messages = [{"role": "user", "content": QUESTION}]
        chat = [c async for c in await client.chat(model=MODEL, messages=messages, stream=True, options=GREEDY)]
        generated = [c async for c in await client.generate(model=MODEL, prompt=QUESTION, stream=True,
                                                            options=GREEDY)]
        return chat, generated

    chat, generated = asyncio.run(run())
    assert "Paris" in "".join(c.message.content for c in chat) and chat[-1].done and chat[-1].eval_count >= 3
    assert "Paris" in "".join(c.response for c in generated) and generated[-1].done_reason == "stop"


def test_ollama_client_legacy_embeddings_preload_and_unload(server):
    client = ollama.Client(host=server.url)
    assert len(client.embeddings(model=MODEL, prompt="hello").embedding) == 576
    assert client.generate(model=MODEL, keep_alive=0).done_reason == "unload"
    assert client.ps().models == []
    assert client.generate(model=MODEL, keep_alive="10m").done_reason == "load"
    [running] = client.ps().models
    assert running.model == MODEL and running.expires_at is not None
    assert client.chat(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                       options=GREEDY).load_duration == 0  # preloaded: nothing left to load
