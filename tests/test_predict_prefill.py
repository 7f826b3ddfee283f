"""Prefix warm-up of later stages: real `mirador ask` against a scripted server (what is sent, when),
and the chain executor against a real `mirador serve --engine llama_cpp` (SmolLM2: the stage reads less)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from clirun import run_mirador

from mirador.config import load_settings
from mirador.predict.preload import StagePreloader
from mirador.runtime.client import OllamaClient
from mirador.stream.chain import ChainRequest, run_chain, stages_for
from mirador.stream.events import StageFailed, StageFinished, StageStarted


def models(first_rate: float = 40, later_ttft: float = 0.0) -> dict:
    # Stages 1 and 2 stream for about a second each: time for the next stage's load and warm-ups beside it.
    return {
        "a:1b": {"text": " ".join(["word"] * 40), "rate": first_rate},
        "b:3b": {"text": " ".join(["analysis"] * 30), "load_time": 0.2, "ttft": later_ttft, "rate": first_rate},
        "c:8b": {"text": "the final synthesis", "load_time": 0.2, "ttft": later_ttft},
    }


def chats(server) -> list[dict]:
    return [r["body"] for r in server.requests() if r["path"] == "/api/chat" and isinstance(r["body"], dict)]


def is_warm_up(body: dict) -> bool:
    return (body.get("options") or {}).get("num_predict") == 1


def test_later_stages_read_their_prompt_start_while_stage_one_streams(server_factory, tmp_path):
    server = server_factory(models())
    result = run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why is the sky blue?"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    bodies = chats(server)
    warm = [b for b in bodies if is_warm_up(b)]
    real = {b["model"]: b for b in bodies if not is_warm_up(b)}
    assert sorted(real) == ["a:1b", "b:3b", "c:8b"]
    assert {b["model"] for b in warm} == {"b:3b", "c:8b"}  # never the model streaming stage 1
    # stage 2's model is refreshed as stage 1's text grows; each warm-up precedes its stage
    assert len([b for b in warm if b["model"] == "b:3b"]) >= 2
    for body in warm:
        assert bodies.index(body) < bodies.index(real[body["model"]])
        stage = real[body["model"]]
        # a prefix of what the stage sends: same system prompt, the user turn cut short at most
        assert body["messages"][:-1] == stage["messages"][:-1]
        assert stage["messages"][-1]["content"].startswith(body["messages"][-1]["content"].rstrip())
        assert body["keep_alive"] == stage["keep_alive"]
    # the last refresh of stage 2 already carried part of stage 1's draft
    assert "Earlier drafts" in [b for b in warm if b["model"] == "b:3b"][-1]["messages"][-1]["content"]


@pytest.mark.parametrize("env", [{"MIRADOR_POWER": "battery:5"}, {"MIRADOR_PRELOAD_PREFIX": "0"},
                                 {"MIRADOR_PRELOAD": "0"}], ids=["survival", "prefix-off", "preload-off"])
def test_no_warm_up_in_survival_or_when_switched_off(server_factory, tmp_path, env):
    server = server_factory(models(first_rate=80))
    result = run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], tmp_path, server.host, **env)
    assert result.returncode == 0, result.stderr
    bodies = chats(server)
    assert len(bodies) == 3 and not [b for b in bodies if is_warm_up(b)]


def _settings(home: Path, monkeypatch: pytest.MonkeyPatch, prefix: bool = True):
    monkeypatch.setenv("MIRADOR_HOME", str(home))
    monkeypatch.setenv("MIRADOR_POWER", "plugged")
    monkeypatch.setenv("MIRADOR_PRELOAD_PREFIX", "1" if prefix else "0")
    return load_settings()


class Recording(OllamaClient):
    """A real client that keeps each /api/chat's last chunk, tagged with its num_predict."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.finals: list[tuple[str, object, dict]] = []

    def chat(self, model, messages, **kwargs):
        stream = super().chat(model, messages, **kwargs)
        limit = (kwargs.get("options") or {}).get("num_predict")

        async def keep():
            async for chunk in stream:
                if chunk.get("done"):
                    self.finals.append((model, limit, chunk))
                yield chunk
        return keep()


async def _ask(url: str, chain: list[str], settings, num_predict: int, question: str = "Why is the sky blue?"):
    request = ChainRequest(question, stages_for(chain), lambda m: "5m",
                           options={"num_predict": num_predict, "temperature": 0, "seed": 1})
    events = []
    async with Recording(url, read_timeout=300) as client:
        preloader = StagePreloader(client, request.keep_alive, settings, request=request)
        preloader.ensure(chain)
        try:
            async for event in run_chain(client, request):
                preloader.observe(event)
                events.append(event)
        finally:
            await preloader.aclose()
    return events, client.finals, preloader


def test_a_warm_stage_cancels_its_warm_up_and_does_not_wait_for_it(server_factory, tmp_path, monkeypatch):
    # Each of b's answers takes 1.5 s to its first token: a warm-up still running when stage 2
    # starts would hold the stage that long, unless it is cancelled.
    server = server_factory({"a:1b": {"text": " ".join(["word"] * 10), "rate": 20},
                             "b:3b": {"text": "second", "ttft": 1.5}})
    settings = _settings(tmp_path / "home", monkeypatch)
    events, finals, preloader = asyncio.run(_ask(server.url, ["a:1b", "b:3b"], settings, 8))
    assert not [e for e in events if isinstance(e, StageFailed)]
    warmed = preloader.warmer.sent
    assert warmed and all(w.model == "b:3b" for w in warmed) and warmed[-1].cancelled
    second = next(e for e in events if isinstance(e, StageFinished) and e.stage == 2)
    assert second.text == "second"
    assert second.stats.ttft_ms < 1.5 * 1000 * 1.6  # its own 1.5 s, not a queued warm-up's 1.5 s first


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from llamaproc import start_llama_server

    tmp = tmp_path_factory.mktemp("llama-prefill")
    server = start_llama_server(tmp)
    for copy in ("smol-b:135m", "smol-c:135m"):  # three names, three separately loaded models
        httpx.post(server.url + "/api/copy", json={"source": "smollm2:135m", "destination": copy},
                   timeout=60).raise_for_status()
    yield server
    server.stop()


def _unload_all(url: str) -> None:
    for model in httpx.get(url + "/api/ps", timeout=30).json().get("models") or []:
        httpx.post(url + "/api/generate", json={"model": model["name"], "keep_alive": 0}, timeout=60)


@pytest.mark.parametrize("prefix", [True, False], ids=["warm-up", "load-only"])
def test_on_the_embedded_runtime_a_warmed_stage_reads_only_the_end_of_its_prompt(llama_server, tmp_path,
                                                                                  monkeypatch, prefix):
    chain = ["smollm2:135m", "smol-b:135m", "smol-c:135m"]
    _unload_all(llama_server.url)
    settings = _settings(tmp_path / "home", monkeypatch, prefix)
    events, finals, preloader = asyncio.run(_ask(llama_server.url, chain, settings, 32))
    assert not [e for e in events if isinstance(e, StageFailed)]
    assert [e.model for e in events if isinstance(e, StageStarted)] == chain
    assert all(e.text.strip() for e in events if isinstance(e, StageFinished))
    stage = {m: c for m, limit, c in finals if limit != 1}  # each stage's own request
    warm = [m for m, limit, _ in finals if limit == 1]
    for model in chain[1:]:
        total, cached = stage[model]["prompt_eval_count"], stage[model].get("prompt_eval_cached_count", 0)
        if prefix:
            assert model in [w.model for w in preloader.warmer.sent]
            # Stage 2 is warmed all through stage 1; stage 3 only while stage 2 streams, which on a
            # busy CPU may end before its warm-up has read far: some of its prompt, at least.
            assert cached >= (total // 3 if model == chain[1] else 1), (model, cached, total)
        else:
            assert cached == 0, (model, cached, total)  # a preloaded model has read nothing yet
    if not prefix:
        assert preloader.warmer is None and warm == []
