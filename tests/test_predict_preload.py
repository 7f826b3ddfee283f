"""Stages 2..n preload while stage 1 streams: real `mirador ask` processes against real scripted servers."""

from __future__ import annotations

import json
import time

import httpx
from clirun import run_mirador, spawn_mirador, stage_rows

from mirador.predict.preload import choose_preloads, size_from_show

GB = 1_000_000_000


def models(load_time: float = 0.8, first_rate: float = 0) -> dict:
    # Stage 1 is slow enough (its own cold load) for the later stages' loads to finish beside it.
    # Half a billion 16-bit weights: 1 GB each once loaded, as /api/show tells it.
    size = {"parameter_size": "0.5B", "quantization_level": "F16"}
    return {
        "a:1b": {"text": "one two three four five six", "load_time": load_time, "rate": first_rate, **size},
        "b:3b": {"text": "analysis of the question", "load_time": load_time, **size},
        "c:8b": {"text": "the final synthesis", "load_time": load_time, **size},
    }


def preloads(server) -> list[str]:
    """Models the client preloaded: /api/generate with no prompt."""
    return [r["body"]["model"] for r in server.requests()
            if r["path"] == "/api/generate" and isinstance(r["body"], dict) and not r["body"].get("prompt")]


def test_later_stages_are_preloaded_while_stage_one_streams(server_factory, tmp_path):
    server = server_factory(models())
    result = run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    assert sorted(preloads(server)) == ["b:3b", "c:8b"]  # never the stage-1 model while it streams
    assert not [r for r in server.requests() if r["path"] == "/api/tags"]  # no tags round trip per ask
    paths = [(r["path"], r["body"].get("model")) for r in server.requests() if isinstance(r["body"], dict)]
    assert paths.index(("/api/generate", "b:3b")) < paths.index(("/api/chat", "b:3b"))
    first, second, third = stage_rows(tmp_path)
    assert first["load_ms"] >= 500  # stage 1 loaded cold
    assert (second["load_ms"] or 0) < 50 and (third["load_ms"] or 0) < 50  # warm: preload hits
    keep = [r["body"]["keep_alive"] for r in server.requests() if r["path"] == "/api/generate"]
    assert keep and all(k == "10m" for k in keep)  # the same keep_alive the stages send


def test_preloading_off_by_setting_sends_no_preload(server_factory, tmp_path):
    server = server_factory(models(load_time=0.3))
    result = run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], tmp_path, server.host, MIRADOR_PRELOAD="0")
    assert result.returncode == 0, result.stderr
    assert preloads(server) == []
    assert all(row["load_ms"] >= 250 for row in stage_rows(tmp_path))  # every stage waited for its load


def test_survival_profile_preloads_nothing(server_factory, tmp_path):
    server = server_factory(models(load_time=0.2))
    result = run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], tmp_path, server.host,
                         MIRADOR_POWER="battery:5")
    assert result.returncode == 0, result.stderr
    assert preloads(server) == []


def test_single_stage_sends_no_preload(server_factory, tmp_path):
    server = server_factory(models(load_time=0))
    result = run_mirador(["ask", "-m", "a:1b", "hi"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    assert preloads(server) == [] and [r["path"] for r in server.requests()] == ["/api/chat"]


def test_memory_too_small_loads_fewer_and_stage_one_wins(server_factory, tmp_path):
    server = server_factory(models(load_time=0.3))
    # 2.5 GB free: 90% is 2.25; stage 1's model takes 1, so b fits (1) and c does not.
    result = run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], tmp_path, server.host,
                         MIRADOR_FREE_MEMORY=str(int(2.5 * GB)))
    assert result.returncode == 0, result.stderr
    assert preloads(server) == ["b:3b"]
    first, second, third = stage_rows(tmp_path)
    assert (second["load_ms"] or 0) < 50 and third["load_ms"] >= 250


def test_server_limit_on_loaded_models_is_respected(server_factory, tmp_path):
    server = server_factory(models(load_time=0.3), max_loaded_models=2)
    result = run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], tmp_path, server.host,
                         MIRADOR_PRELOAD_MAX_LOADED="2")
    assert result.returncode == 0, result.stderr
    assert preloads(server) == ["b:3b"]  # c would have evicted b before stage 2 used it


def test_a_deleted_model_is_ignored_and_noted_once(server_factory, tmp_path):
    server = server_factory(models(load_time=0.2))
    result = run_mirador(["ask", "--chain", "a:1b,gone:1b,c:8b", "why?"], tmp_path, server.host)
    assert "Traceback" not in result.stderr
    assert result.stderr.count("gone:1b is no longer on the server") == 1
    assert "c:8b" in preloads(server)
    rows = stage_rows(tmp_path)
    assert rows[2]["text"] == "the final synthesis" and (rows[2]["load_ms"] or 0) < 50


def test_a_preloaded_model_evicted_before_use_is_loaded_normally_and_the_miss_recorded(server_factory, tmp_path):
    spec = models(load_time=0.3)
    spec["a:1b"].update(text=" ".join(["word"] * 60), rate=20)  # stage 1 streams for about 3 s
    server = server_factory(spec)
    proc = spawn_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], tmp_path, server.host)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            running = {m["name"] for m in httpx.get(server.url + "/api/ps").json()["models"]}
            if "b:3b" in running:
                break
            time.sleep(0.05)
        assert "b:3b" in running, "b was never preloaded"
        # The server lets it go (another client, memory pressure) before stage 2 starts.
        assert httpx.post(server.url + "/api/generate", json={"model": "b:3b", "keep_alive": 0}).json()[
            "done_reason"] == "unload"
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    first, second, third = stage_rows(tmp_path)
    assert second["text"] == "analysis of the question"
    assert second["load_ms"] >= 250  # waited for a normal load: the miss is in history
    assert (third["load_ms"] or 0) < 50


def test_json_output_is_unchanged_by_preloading(server_factory, tmp_path):
    server = server_factory(models(load_time=0.1))
    result = run_mirador(["ask", "--json", "--chain", "a:1b,b:3b", "why?"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["event"] for e in events if e["event"] != "token"] == ["stage_start", "stage_end"] * 2


# -- the choice itself -----------------------------------------------------------------------


def test_choice_never_includes_the_first_model_and_keeps_stage_order():
    choice = choose_preloads("a", ["c", "a", "b", "c"], loaded=set(), sizes={}, free_bytes=None, max_loaded=5)
    assert choice.load == ["c", "b"]


def test_choice_counts_loaded_models_against_the_limit_without_a_request():
    choice = choose_preloads("a", ["b", "c", "d"], loaded={"a", "b"}, sizes={}, free_bytes=None, max_loaded=3)
    assert choice.load == ["c"] and choice.skipped["b"] == "already loaded" and "d" in choice.skipped


def test_choice_sets_the_first_models_memory_aside():
    sizes = {"a": 4 * GB, "b": 2 * GB, "c": 1 * GB}
    choice = choose_preloads("a", ["b", "c"], loaded=set(), sizes=sizes, free_bytes=6 * GB, max_loaded=3)
    assert choice.load == ["c"] and choice.skipped["b"] == "not enough free memory"
    warm = choose_preloads("a", ["b", "c"], loaded={"a"}, sizes=sizes, free_bytes=6 * GB, max_loaded=3)
    assert warm.load == ["b", "c"]  # a is in memory already: the free figure excludes it


def test_size_from_show_reads_the_parameter_count_and_quantization():
    assert size_from_show({"model_info": {"general.parameter_count": 8_000_000_000},
                           "details": {"quantization_level": "Q4_K_M"}}) == 4_800_000_000
    assert size_from_show({"details": {"parameter_size": "0.5B", "quantization_level": "F16"}}) == GB
    assert size_from_show({"details": {}}) == 0
