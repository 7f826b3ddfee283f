"""Speculative first stages against real servers: the losers' streams close and their servers stop."""

from __future__ import annotations

import asyncio
import time

import httpx

from mirador.predict.speculative import Candidate, SpeculationCost, decide_after, distinct, should_speculate, speculate
from mirador.runtime.client import OllamaClient

MODELS = {
    "a:1b": {"num_tokens": 2000, "rate": 40},
    "b:3b": {"text": "the chosen interpretation answers", "rate": 40},
    "c:8b": {"num_tokens": 2000, "rate": 40},
    "short:1b": {"text": "done quickly"},
}


def ask(model: str) -> Candidate:
    return Candidate(model, [{"role": "user", "content": "ambiguous question"}])


async def first_token_s(client: OllamaClient, model: str) -> float:
    started = time.perf_counter()
    async for chunk in client.chat(model, [{"role": "user", "content": "next"}], keep_alive="10m"):
        if (chunk.get("message") or {}).get("content"):
            return time.perf_counter() - started
    return time.perf_counter() - started


def run(coro):
    return asyncio.run(coro)


def test_the_winner_streams_on_and_the_losers_are_cancelled(server_factory):
    server = server_factory(MODELS)

    async def main():
        async with OllamaClient(server.url) as client:
            cost = SpeculationCost()
            chunks = [c async for c in speculate(client, [ask("a:1b"), ask("b:3b"), ask("c:8b")],
                                                 decide_after(0.5, "b:3b"), cost)]
            # a:1b had ~1900 tokens to go: only a stopped generation gives its turn to the next request
            waits = [await first_token_s(client, m) for m in ("a:1b", "c:8b")]
            return chunks, cost, waits

    chunks, cost, waits = run(main())
    assert "".join((c.get("message") or {}).get("content", "") for c in chunks) == "the chosen interpretation answers"
    assert chunks[-1]["done"] is True
    assert sorted(cost.cancelled) == ["a:1b", "c:8b"] and cost.wasted_tokens > 10
    assert cost.energy_j(20.0) > 0
    assert all(w < 1.0 for w in waits), waits


def test_one_model_is_never_speculated_on_twice(server_factory):
    server = server_factory(MODELS)
    assert [c.model for c in distinct([ask("a:1b"), ask("a:1b"), ask("b:3b"), ask("c:8b"), ask("short:1b")])] == [
        "a:1b", "b:3b", "c:8b"]

    async def main():
        async with OllamaClient(server.url) as client:
            return [c async for c in speculate(client, [ask("b:3b"), ask("b:3b"), ask("short:1b")],
                                               decide_after(0.05, "b:3b"))]

    run(main())
    assert [r["body"]["model"] for r in server.requests() if r["path"] == "/api/chat"].count("b:3b") == 1


def test_cancelling_a_loser_that_already_finished_is_no_error(server_factory):
    server = server_factory(MODELS)

    async def main():
        async with OllamaClient(server.url) as client:
            cost = SpeculationCost()
            chunks = [c async for c in speculate(client, [ask("short:1b"), ask("b:3b")],
                                                 decide_after(0.8, "b:3b"), cost)]
            return chunks, cost

    chunks, cost = run(main())
    assert cost.finished_before_cancel == ["short:1b"] and cost.cancelled == []
    assert cost.wasted_tokens == 2 and chunks[-1]["done"]


def test_speculation_only_when_close_and_never_in_survival_or_on_a_low_battery(monkeypatch):
    monkeypatch.setenv("MIRADOR_POWER", "plugged")
    assert should_speculate(0.05) and not should_speculate(0.5)
    monkeypatch.setenv("MIRADOR_POWER", "battery:30")  # balanced, but below the battery threshold
    assert not should_speculate(0.05)
    monkeypatch.setenv("MIRADOR_POWER", "battery:80")
    assert should_speculate(0.05)
    monkeypatch.setenv("MIRADOR_POWER", "battery:5")  # survival
    assert not should_speculate(0.05)


def test_on_the_embedded_runtime_a_cancelled_stream_stops_generation(tmp_path):
    from llamaproc import start_llama_server

    server = start_llama_server(tmp_path)
    try:
        httpx.post(server.url + "/api/copy", json={"source": "smollm2:135m", "destination": "smol-b:135m"},
                   timeout=60).raise_for_status()
        long = {"num_predict": 4000, "temperature": 0}

        async def main():
            async with OllamaClient(server.url) as client:
                cost = SpeculationCost()
                story = "Write a very long story about a dragon, at least two thousand words."
                loser = Candidate("smollm2:135m", [{"role": "user", "content": story}], long)
                winner = Candidate("smol-b:135m", [{"role": "user", "content": "Say hi."}], {"num_predict": 8})
                async def decide() -> str:  # once the loser is generating
                    deadline = time.monotonic() + 60
                    while cost.streamed.get("smollm2:135m", 0) < 5 and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    return "smol-b:135m"

                chunks = [c async for c in speculate(client, [loser, winner], decide(), cost)]
                return chunks, cost, await first_token_s(client, "smollm2:135m")

        chunks, cost, wait = run(main())
        assert chunks[-1]["done"] and cost.cancelled == ["smollm2:135m"] and cost.wasted_tokens > 0
        assert wait < 5.0  # 4000 tokens would have taken far longer: the server stopped generating
    finally:
        server.stop()


def test_the_thresholds_come_from_the_settings(monkeypatch, tmp_path):
    from mirador.config import load_settings

    monkeypatch.setenv("MIRADOR_HOME", str(tmp_path))
    monkeypatch.setenv("MIRADOR_POWER", "battery:30")
    settings = load_settings()
    assert settings.speculate_margin == 0.15 and settings.speculate_battery_below == 50
    assert not should_speculate(0.05, settings)
    settings.values["speculate_battery_below"] = 20.0
    assert should_speculate(0.05, settings) and not should_speculate(0.2, settings)


def test_the_chain_adopts_the_winners_stream_only_for_the_request_it_speculated_on(server_factory):
    from mirador.predict.speculative import AdoptingClient, Speculation

    server = server_factory(MODELS)

    async def main():
        async with OllamaClient(server.url) as client:
            speculation = Speculation(client, [ask("a:1b"), ask("b:3b")])
            await asyncio.sleep(0.3)
            winner = await speculation.settle("b:3b")
            adopting = AdoptingClient(client, winner)
            same = [c async for c in adopting.chat("b:3b", ask("b:3b").messages, keep_alive="10m")]
            again = [c async for c in adopting.chat("b:3b", ask("b:3b").messages, keep_alive="10m")]
            other = Speculation(client, [ask("short:1b"), ask("c:8b")])
            switched = AdoptingClient(client, await other.settle("short:1b"))
            different = [c async for c in switched.chat("short:1b", [{"role": "user", "content": "else"}],
                                                        keep_alive="10m")]
            await other.aclose()
            return speculation, same, again, different

    speculation, same, again, different = run(main())
    text = "".join((c.get("message") or {}).get("content", "") for c in same)
    assert text == "the chosen interpretation answers" and same[-1]["done"]
    assert speculation.outcomes == {"a:1b": "cancelled", "b:3b": "winner"} and speculation.cost.decide_s > 0
    assert again[-1]["done"]  # a second request for the model is a real one
    assert different[-1]["done"]
    chats = [(r["body"]["model"], r["body"]["messages"][-1]["content"]) for r in server.requests()
             if r["path"] == "/api/chat"]
    assert chats.count(("b:3b", "ambiguous question")) == 2  # the speculation's, then the second request
    assert ("short:1b", "else") in chats  # another request than the speculated one went to the server


def test_a_decision_outside_the_candidates_is_an_error_and_closes_everything(server_factory):
    import pytest

    from mirador.errors import MiradorError
    from mirador.predict.speculative import Speculation

    server = server_factory(MODELS)

    async def main():
        async with OllamaClient(server.url) as client:
            speculation = Speculation(client, [ask("a:1b"), ask("c:8b")])
            with pytest.raises(MiradorError, match="not among the speculated models"):
                await speculation.settle("b:3b")
            return speculation, [await first_token_s(client, m) for m in ("a:1b", "c:8b")]

    speculation, waits = run(main())
    assert sorted(speculation.cost.cancelled) == ["a:1b", "c:8b"]
    assert all(w < 1.0 for w in waits), waits  # 2000-token answers at 40/s: only closed streams free them
