"""Prefix warm-up of later stages: real `mirador ask` against a scripted server (what is sent, when),
and the chain executor against a real `mirador serve --engine llama_cpp` (SmolLM2: the stage reads less)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from clirun import run_mirador

from mirador.config import load_settings
from mirador.predict.prefill import REFRESH_TOKENS
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


class Tracking(Recording):
    """Also watches, as the requests leave, how many warm-ups are open at once and whether one goes
    to a model whose stage is streaming (or reading its prompt)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.streaming: set[str] = set()  # models whose stage request is open
        self.warming = 0
        self.most_warming = 0
        self.to_streaming: list[str] = []
        self.bodies: list[tuple[str, object, list]] = []  # (model, num_predict, messages) in order

    def chat(self, model, messages, **kwargs):
        stream = super().chat(model, messages, **kwargs)
        limit = (kwargs.get("options") or {}).get("num_predict")
        self.bodies.append((model, limit, messages))

        async def watch():
            warm = limit == 1
            if warm:
                if model in self.streaming:
                    self.to_streaming.append(model)
                self.warming += 1
                self.most_warming = max(self.most_warming, self.warming)
            else:
                self.streaming.add(model)
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                if warm:
                    self.warming -= 1
                else:
                    self.streaming.discard(model)
        return watch()


async def _ask(url: str, chain: list[str], settings, num_predict: int, question: str = "Why is the sky blue?",
               client_class: type[Recording] = Recording):
    request = ChainRequest(question, stages_for(chain), lambda m: "5m",
                           options={"num_predict": num_predict, "temperature": 0, "seed": 1})
    events = []
    async with client_class(url, read_timeout=300) as client:
        preloader = StagePreloader(client, request.keep_alive, settings, request=request)
        preloader.ensure(chain)
        try:
            async for event in run_chain(client, request):
                preloader.observe(event)
                events.append(event)
        finally:
            await preloader.aclose()
    if client_class is not Recording:
        return events, client, preloader
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


def _is_prefix(warm: list, stage: list) -> bool:
    """A warm-up's messages lead to the stage's: same messages, the last one cut short at most."""
    return warm[:-1] == stage[:-1] and stage[-1]["content"].startswith(warm[-1]["content"].rstrip())


def test_stage_three_is_warmed_during_stage_one_when_stage_two_is_up_to_date(server_factory, tmp_path,
                                                                           monkeypatch):
    # Stage 1 streams for ~2 s; b's warm-ups answer at once, so b is up to date most of the time.
    server = server_factory({"a:1b": {"text": " ".join(["word"] * 40), "rate": 20},
                             "b:3b": {"text": "second", "load_time": 0.05},
                             "c:8b": {"text": "third", "load_time": 0.3}})
    settings = _settings(tmp_path / "home", monkeypatch)
    events, client, preloader = asyncio.run(_ask(server.url, ["a:1b", "b:3b", "c:8b"], settings, 64,
                                                 client_class=Tracking))
    assert not [e for e in events if isinstance(e, StageFailed)]
    assert [e.text for e in events if isinstance(e, StageFinished)][1:] == ["second", "third"]
    sent = preloader.warmer.sent
    early = [i for i, w in enumerate(sent) if w.model == "c:8b" and w.during == 1]
    assert early, [(w.model, w.during, w.tokens) for w in sent]  # stage 3 did not wait for stage 2
    for i in early:
        # ...and only in stage 2's idle time: b's last warm-up before it is less than a refresh behind
        last_b = [w for w in sent[:i] if w.model == "b:3b"]
        assert last_b and last_b[-1].drafts == sent[i].drafts, [(w.model, w.tokens) for w in sent]
        assert sent[i].tokens - last_b[-1].tokens < REFRESH_TOKENS, [(w.model, w.tokens) for w in sent]
    assert client.most_warming == 1  # never two warm-ups at once
    assert client.to_streaming == []  # never to a model whose stage is running
    real = {model: messages for model, limit, messages in client.bodies if limit != 1}
    for model, limit, messages in client.bodies:
        if limit == 1:
            assert _is_prefix(messages, real[model]), (model, messages[-1], real[model][-1])
    c_early = [m for model, limit, m in client.bodies if model == "c:8b" and limit == 1][0]
    assert "Earlier drafts" in c_early[-1]["content"]  # stage 1's draft so far came along


def test_a_later_stage_warm_up_yields_to_the_next_stage(server_factory, tmp_path, monkeypatch):
    # Each of c's requests takes 1 s to its token: its warm-up is still reading when b falls a
    # refresh behind (8 tokens of stage 1: 0.4 s), so it must be cut short for b's refresh. And
    # while stage 2 reads its prompt (0.15 s), c is warmed with stage 1's finished draft.
    server = server_factory({"a:1b": {"text": " ".join(["word"] * 40), "rate": 20},
                             "b:3b": {"text": "second", "load_time": 0.05, "ttft": 0.15},
                             "c:8b": {"text": "third", "load_time": 0.3, "ttft": 1.0}})
    settings = _settings(tmp_path / "home", monkeypatch)
    events, client, preloader = asyncio.run(_ask(server.url, ["a:1b", "b:3b", "c:8b"], settings, 64,
                                                 client_class=Tracking))
    assert not [e for e in events if isinstance(e, StageFailed)]
    sent = preloader.warmer.sent
    shown = [(w.model, w.during, w.tokens, w.cancelled) for w in sent]
    cut = [i for i, w in enumerate(sent) if w.model == "c:8b" and w.during == 1 and w.cancelled]
    assert cut, shown
    assert any(w.model == "b:3b" and w.during == 1 for w in sent[cut[0] + 1:]), shown
    # stage 3's model read stage 1's whole draft while stage 2 read its own prompt
    assert any(w.model == "c:8b" and w.during == 2 and w.tokens == 0 and w.drafts == 1 for w in sent), shown
    assert client.most_warming == 1 and client.to_streaming == []
    real = {model: messages for model, limit, messages in client.bodies if limit != 1}
    assert all(_is_prefix(m, real[model]) for model, limit, m in client.bodies if limit == 1)


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
            # Stage 2 is warmed all through stage 1; stage 3 in stage 2's idle time, which a slow CPU
            # may never leave, then while stage 2 reads its prompt and streams: some of it, at least.
            assert cached >= (total // 3 if model == chain[1] else 1), (model, cached, total)
        else:
            assert cached == 0, (model, cached, total)  # a preloaded model has read nothing yet
    if not prefix:
        assert preloader.warmer is None and warm == []
