"""`mirador serve --engine scripted`: real server processes, real HTTP, real clients; no mocks."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import ollama
import pytest
from serverproc import start_scripted_server

from mirador.runtime.scheduler import FOREVER, BadRequest, parse_go_duration, parse_keep_alive

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
FINAL_FIELDS = {"model", "created_at", "done", "done_reason", "total_duration", "load_duration",
                "prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration"}
SLOW = {"num_tokens": 5000, "rate": 100}  # 50 s if left to run: tests cut it short


def stream(url: str, path: str, body: dict, *, times: list[float] | None = None,
           stop_after: int | None = None, until: threading.Event | None = None) -> list[dict]:
    """POST and read NDJSON lines; `times` gets each line's arrival. stop_after (a line count)
    or `until` (an event) closes the connection early, as a client that goes away does."""
    lines = []
    with httpx.Client(timeout=60) as client, client.stream("POST", url + path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            if times is not None:
                times.append(time.monotonic())
            lines.append(json.loads(line))
            if (stop_after is not None and len(lines) >= stop_after) or (until is not None and until.is_set()):
                break
    return lines


def server_ns(chunk: dict) -> int:
    """A chunk's created_at in ns: the server's own clock orders events across connections."""
    stamp = chunk["created_at"].removesuffix("Z")
    whole, _, fraction = stamp.partition(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 10**9 + int(fraction.ljust(9, "0"))


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def joined(thread: threading.Thread, out: dict, timeout: float = 30):
    thread.join(timeout)
    assert not thread.is_alive(), "request thread did not finish"
    if "error" in out:
        raise out["error"]
    return out["result"]


def ps(server) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(server.url + "/api/ps").json()["models"]}


def expires_in(model: dict) -> timedelta:
    return datetime.fromisoformat(model["expires_at"]) - datetime.now(UTC)  # Go trims trailing zeros


def wait_until(condition, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def chat_body(model: str, text: str = "hi", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


# -- the official client, unchanged --------------------------------------------------------------


def test_official_ollama_client_works_unchanged(scripted_server):
    client = ollama.Client(host=scripted_server.url)
    chunks = list(client.chat(model="fast:1b", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(c.message.content for c in chunks) == "Hello there, friend."
    last = chunks[-1]
    assert last.done and last.done_reason == "stop" and last.eval_count == 3
    assert last.total_duration >= last.eval_duration > 0 and last.prompt_eval_count >= 1

    generated = client.generate(model="fast:1b", prompt="hi", keep_alive="10m")
    assert generated.response == "Hello there, friend." and generated.done_reason == "stop"

    assert [m.model for m in client.list().models] == ["fast:1b", "mid:3b", "big:8b"]
    [running] = client.ps().models
    assert running.model == "fast:1b" and running.size == running.size_vram == 1_300_000_000
    assert running.details.parameter_size == "1.2B" and running.context_length == 4096

    shown = client.show("big:8b")
    assert "completion" in shown.capabilities and "embedding" in shown.capabilities
    assert shown.details.family == "llama" and shown.modelinfo["general.architecture"] == "llama"

    embedded = client.embed(model="fast:1b", input=["the cat sat", "the cat sat", "quantum flux"])
    first, same, other = embedded.embeddings
    assert len(first) == 384 and first == same and math.isclose(sum(x * x for x in first), 1, rel_tol=1e-9)
    assert sum(a * b for a, b in zip(first, other, strict=True)) < 0.5
    assert client.embeddings(model="fast:1b", prompt="the cat sat").embedding == first

    assert httpx.get(scripted_server.url + "/").text == "Ollama is running"
    assert httpx.head(scripted_server.url + "/").status_code == 200
    assert httpx.get(scripted_server.url + "/api/version").json()["version"]
    paths = [r["path"] for r in scripted_server.requests()]
    assert paths[:4] == ["/api/chat", "/api/generate", "/api/tags", "/api/ps"]


def test_chunks_carry_exactly_ollama_fields(scripted_server):
    chat = stream(scripted_server.url, "/api/chat", chat_body("fast:1b"))
    for chunk in chat[:-1]:
        assert set(chunk) == {"model", "created_at", "message", "done"} and chunk["done"] is False
        assert chunk["message"]["role"] == "assistant" and RFC3339_NANO.match(chunk["created_at"])
    assert set(chat[-1]) == FINAL_FIELDS | {"message"} and chat[-1]["done"] is True

    generate = stream(scripted_server.url, "/api/generate", {"model": "mid:3b", "prompt": "hi"})
    assert all(set(c) == {"model", "created_at", "response", "done"} for c in generate[:-1])
    assert set(generate[-1]) == FINAL_FIELDS | {"response"}
    assert generate[-1]["load_duration"] >= 0.05e9  # mid:3b's scripted load_time
    assert "".join(c["response"] for c in generate) == "A considered answer from the middle model."

    whole = httpx.post(scripted_server.url + "/api/chat", json=chat_body("fast:1b", stream=False))
    assert whole.headers["content-type"].startswith("application/json")
    assert whole.json()["message"]["content"] == "Hello there, friend." and whole.json()["done"]


# -- keep_alive, ps, eviction ------------------------------------------------------------------------


def test_keep_alive_loads_unloads_and_sets_expiry(server_factory):
    server = server_factory({"a:1b": {"load_time": 0.2}, "b:1b": {}})
    url = server.url
    loaded = httpx.post(url + "/api/generate", json={"model": "a:1b", "keep_alive": "10m"}).json()
    assert loaded["done"] and loaded["done_reason"] == "load" and loaded["response"] == ""
    model = ps(server)["a:1b"]
    assert timedelta(minutes=9) < expires_in(model) <= timedelta(minutes=10)
    assert set(model) >= {"name", "model", "size", "digest", "details", "expires_at", "size_vram",
                          "context_length"}
    assert set(model["details"]) >= {"family", "parameter_size", "quantization_level", "format", "families",
                                     "parent_model"}

    # Absent keep_alive keeps the model's own duration; a number is seconds; negative is forever.
    stream(url, "/api/chat", chat_body("a:1b"))
    assert timedelta(minutes=9) < expires_in(ps(server)["a:1b"]) <= timedelta(minutes=10)
    stream(url, "/api/chat", chat_body("a:1b", keep_alive=120))
    assert timedelta(seconds=100) < expires_in(ps(server)["a:1b"]) <= timedelta(seconds=120)
    for forever in (-1, "-1m"):
        stream(url, "/api/chat", chat_body("a:1b", keep_alive=forever))
        assert expires_in(ps(server)["a:1b"]) > timedelta(days=365 * 200)
        stream(url, "/api/chat", chat_body("a:1b"))
        assert expires_in(ps(server)["a:1b"]) > timedelta(days=365 * 200)

    bare = httpx.post(url + "/api/generate", json={"model": "b:1b", "keep_alive": "-1"})
    assert bare.status_code == 400 and "missing unit" in bare.json()["error"]
    assert "b:1b" not in ps(server)

    unloaded = httpx.post(url + "/api/chat", json={"model": "a:1b", "messages": [], "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload" and unloaded["message"]["content"] == ""
    assert ps(server) == {}
    reloaded = stream(url, "/api/chat", chat_body("a:1b", keep_alive=0))
    assert reloaded[-1]["load_duration"] >= 0.2e9  # a cold load again
    assert wait_until(lambda: ps(server) == {}, 5)  # keep_alive 0: gone after the answer

    stream(url, "/api/chat", chat_body("b:1b", keep_alive="1.5s"))
    assert "b:1b" in ps(server)
    assert wait_until(lambda: ps(server) == {}, 10)  # the timer unloaded it


def test_past_max_loaded_the_least_recently_used_idle_model_goes(server_factory):
    server = server_factory({"a:1b": {}, "b:1b": {}, "c:1b": {}}, max_loaded_models=2)
    for name in ("a:1b", "b:1b"):
        httpx.post(server.url + "/api/generate", json={"model": name, "keep_alive": -1})
    stream(server.url, "/api/generate", {"model": "a:1b", "prompt": "hi"})  # b is now the oldest
    httpx.post(server.url + "/api/generate", json={"model": "c:1b", "keep_alive": -1})
    assert set(ps(server)) == {"a:1b", "c:1b"}


def test_when_every_loaded_model_is_busy_a_new_model_waits(server_factory):
    server = server_factory({"a:1b": {"num_tokens": 10, "rate": 20}, "b:1b": {}}, max_loaded_models=1)
    a_times: list[float] = []
    thread, out = in_thread(stream, server.url, "/api/chat", chat_body("a:1b"), times=a_times)
    assert wait_until(lambda: len(a_times) > 0)
    b = stream(server.url, "/api/chat", chat_body("b:1b"))
    a = joined(thread, out)
    assert a[-1]["done_reason"] == "stop" and b[-1]["done_reason"] == "stop"
    assert server_ns(b[0]) >= server_ns(a[-1])  # b loaded only once a finished and could be evicted
    assert set(ps(server)) == {"b:1b"}


# -- queueing ---------------------------------------------------------------------------------------


def test_one_request_at_a_time_per_model_in_order(server_factory):
    server = server_factory({"slow:1b": {"num_tokens": 8, "rate": 20}})
    threads = []
    for i in range(2):
        threads.append(in_thread(stream, server.url, "/api/chat", chat_body("slow:1b", f"q{i}")))
        assert wait_until(lambda n=i + 1: len(server.requests()) == n)
    # A preload of the busy model does not queue: it answers at once and sets the new keep_alive.
    preload = httpx.post(server.url + "/api/generate", json={"model": "slow:1b", "keep_alive": -1}).json()
    first, second = [joined(*t) for t in threads]
    assert all(r[-1]["done"] and r[-1]["eval_count"] == 8 for r in (first, second))
    assert server_ns(second[0]) >= server_ns(first[-1])  # FIFO, one at a time
    assert server_ns(preload) < server_ns(first[-1])
    assert expires_in(ps(server)["slow:1b"]) > timedelta(days=365 * 200)

    # Unloading a busy model answers at once; the model goes when its request ends.
    times: list[float] = []
    thread, out = in_thread(stream, server.url, "/api/chat", chat_body("slow:1b"), times=times)
    assert wait_until(lambda: len(times) > 0)
    unloaded = httpx.post(server.url + "/api/generate", json={"model": "slow:1b", "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload" and "slow:1b" in ps(server)
    assert joined(thread, out)[-1]["done_reason"] == "stop"
    assert wait_until(lambda: ps(server) == {}, 5)


def test_a_full_queue_answers_503(server_factory):
    server = server_factory({"slow:1b": SLOW}, max_queue=1)
    times: list[float] = []
    done = threading.Event()
    running = in_thread(stream, server.url, "/api/chat", chat_body("slow:1b"), times=times, until=done)
    assert wait_until(lambda: len(times) > 0)
    queued = in_thread(stream, server.url, "/api/chat", chat_body("slow:1b"), until=done)
    assert wait_until(lambda: len(server.requests()) == 2)
    refused = httpx.post(server.url + "/api/chat", json=chat_body("slow:1b"))
    assert refused.status_code == 503
    assert refused.json() == {"error": "server busy, please try again.  maximum pending requests exceeded"}
    done.set()  # both clients leave after their next line: the queued one did get its turn
    assert len(joined(*running)) > 1 and len(joined(*queued)) == 1


def test_client_disconnect_frees_the_model_for_the_next_request(server_factory):
    server = server_factory({"slow:1b": SLOW})
    got = stream(server.url, "/api/generate", {"model": "slow:1b", "prompt": "x"}, stop_after=3)
    assert len(got) == 3
    started = time.monotonic()
    nxt = stream(server.url, "/api/generate", {"model": "slow:1b", "prompt": "x", "options": {"num_predict": 5}})
    # The abandoned stream had 50 s to go; the next request needs 0.05 s of it.
    assert time.monotonic() - started < 5
    assert nxt[-1]["done_reason"] == "length" and nxt[-1]["eval_count"] == 5


# -- errors -----------------------------------------------------------------------------------------


def test_bad_requests_and_unknown_models(scripted_server):
    url = scripted_server.url
    bad = httpx.post(url + "/api/chat", content=b'{"model": "fast:1b", ')
    assert bad.status_code == 400 and "invalid JSON" in bad.json()["error"]
    assert httpx.post(url + "/api/generate", json=["not", "an", "object"]).status_code == 400
    assert httpx.post(url + "/api/generate", json={"prompt": "no model"}).status_code == 400
    for path, body in [("/api/chat", chat_body("nope:7b")), ("/api/generate", {"model": "nope:7b", "prompt": "x"}),
                       ("/api/embed", {"model": "nope:7b", "input": "x"}), ("/api/show", {"model": "nope:7b"})]:
        missing = httpx.post(url + path, json=body)
        assert missing.status_code == 404 and missing.json() == {"error": "model 'nope:7b' not found"}
    with pytest.raises(ollama.ResponseError) as raised:
        ollama.Client(host=url).chat(model="nope:7b", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 404
    assert scripted_server.requests()[0]["body"] == '{"model": "fast:1b", '  # recorded even when broken


def test_error_after_ends_the_stream_with_an_error_line(server_factory):
    server = server_factory({"broken:1b": {"text": "one two three four five", "error_after": 2}})
    lines = stream(server.url, "/api/chat", chat_body("broken:1b"))
    assert [line.get("message", {}).get("content") for line in lines[:2]] == ["one", " two"]
    assert lines[2:] == [{"error": "scripted failure after 2 tokens"}]
    whole = httpx.post(server.url + "/api/generate", json={"model": "broken:1b", "prompt": "x", "stream": False})
    assert whole.status_code == 500 and whole.json() == {"error": "scripted failure after 2 tokens"}
    with pytest.raises(ollama.ResponseError, match="scripted failure"):
        list(ollama.Client(host=server.url).generate(model="broken:1b", prompt="x", stream=True))


def test_num_predict_and_stop_sequences(scripted_server):
    def answer(options: dict) -> dict:
        body = chat_body("fast:1b", stream=False, options=options)
        return httpx.post(scripted_server.url + "/api/chat", json=body).json()

    limited = answer({"num_predict": 2})
    assert limited["message"]["content"] == "Hello there," and limited["done_reason"] == "length"
    assert limited["eval_count"] == 2
    stopped = answer({"stop": [" friend"]})
    assert stopped["message"]["content"] == "Hello there," and stopped["done_reason"] == "stop"
    across_tokens = stream(scripted_server.url, "/api/chat", chat_body("fast:1b", options={"stop": ["re, fr"]}))
    assert "".join(c["message"]["content"] for c in across_tokens) == "Hello the"
    assert answer({"stop": ["zzz"], "num_predict": -1})["message"]["content"] == "Hello there, friend."


# -- the process ----------------------------------------------------------------------------------


def test_sigterm_during_a_stream_ends_it_cleanly_and_exits_0(server_factory):
    server = server_factory({"slow:1b": SLOW})
    times: list[float] = []
    thread, out = in_thread(stream, server.url, "/api/chat", chat_body("slow:1b"), times=times)
    assert wait_until(lambda: len(times) >= 3)
    assert server.stop() == 0
    lines = joined(thread, out)  # the chunked stream was terminated properly: no protocol error
    assert lines[-1] == {"error": "server is shutting down"}
    assert "Traceback" not in server.stderr()


def test_a_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "mirador", "serve", "--engine", "scripted",
                                 "--port", str(port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_broken_script_names_the_file(tmp_path):
    script = tmp_path / "script.json"
    script.write_text('{"models": {"a": {"rate": "fast"}}}')
    result = subprocess.run([sys.executable, "-m", "mirador", "serve", "--engine", "scripted", "--port", "0",
                             "--script", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and str(script) in result.stderr and "rate" in result.stderr


def test_listening_beyond_loopback_warns(tmp_path):
    server = start_scripted_server(tmp_path, extra_args=["--host", "0.0.0.0"])
    try:
        assert "no authentication" in server.stderr()
        assert httpx.get(f"http://127.0.0.1:{server.port}/").text == "Ollama is running"
    finally:
        assert server.stop() == 0


def test_throughput_keeps_up_with_the_configured_rate(server_factory):
    rate = 10_000
    server = server_factory({"bench:1b": {"num_tokens": 20_000, "rate": rate}})
    times: list[float] = []
    lines = stream(server.url, "/api/generate", {"model": "bench:1b", "prompt": "go"}, times=times)
    tokens = len(lines) - 1
    assert tokens == 20_000 and lines[-1]["eval_count"] == tokens
    measured = tokens / (times[-1] - times[0])
    assert measured >= 0.8 * rate
    reported = lines[-1]["eval_count"] / lines[-1]["eval_duration"] * 1e9
    assert 0.8 * rate <= reported <= 1.1 * rate


# -- keep_alive parsing, as Go parses durations ----------------------------------------------------


def test_keep_alive_parsing_follows_go():
    assert parse_go_duration("1h30m") == 5400 and parse_go_duration("300ms") == 0.3
    assert parse_go_duration("1.5h") == 5400 and parse_go_duration("0") == 0
    assert parse_keep_alive(None) is None and parse_keep_alive(0) == 0 and parse_keep_alive(90) == 90
    assert parse_keep_alive("-1m") == FOREVER and parse_keep_alive(-1) == FOREVER
    for bad in ("-1", "5", "", "10x", "m", True, [1]):
        with pytest.raises(BadRequest):
            parse_keep_alive(bad)
