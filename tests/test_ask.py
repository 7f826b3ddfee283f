"""`mirador ask` end to end: a real `mirador` process against a real scripted server over HTTP."""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from clirun import run_mirador, spawn_mirador

MODELS = {
    "fast:1b": {"text": "Quick answer.", "embedding_dim": 8},
    "big:8b": {"text": "Considered final answer.", "embedding_dim": 8},
    "echo:1b": {"text": "Echo:", "echo": True},
    "slow:1b": {"num_tokens": 2000, "rate": 40},
    "broken:1b": {"text": "one two three four five six", "error_after": 2},
}


def exchanges(home: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(home / "data" / "history.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM exchanges ORDER BY id").fetchall()
    finally:
        db.close()


def stages(home: Path, exchange_id: int) -> list[sqlite3.Row]:
    db = sqlite3.connect(home / "data" / "history.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM stages WHERE exchange_id=? ORDER BY idx", (exchange_id,)).fetchall()
    finally:
        db.close()


def read_some(proc: subprocess.Popen, timeout: float = 20) -> bytes:
    """Block until the process has written something to stdout."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output from mirador ask"
    return os.read(proc.stdout.fileno(), 4096)


def test_single_model_in_a_pipe_prints_plain_text_and_logs(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "-m", "fast:1b", "hello", "there"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Quick answer.\n"
    assert "\x1b" not in result.stdout
    [body] = server.chat_bodies()
    assert body["messages"] == [{"role": "user", "content": "hello there"}]
    assert "keep_alive" in body  # always sent explicitly
    [row] = exchanges(tmp_path)
    assert row["status"] == "complete" and row["prompt"] == "hello there"
    [stage] = stages(tmp_path, row["id"])
    assert stage["model"] == "fast:1b" and stage["text"] == "Quick answer." and stage["done_reason"] == "stop"


def test_chain_stages_build_on_each_other(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "--chain", "fast:1b,echo:1b", "why?"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.split("\n\n", 1)
    assert first == "Quick answer."
    bodies = server.chat_bodies()
    assert [b["model"] for b in bodies] == ["fast:1b", "echo:1b"]
    assert bodies[0]["options"]["num_predict"] <= 96  # the acknowledgment stays brief
    assert "Quick answer." in bodies[1]["messages"][-1]["content"]  # stage 2 saw stage 1's text
    assert "Quick answer." in second  # the echo model repeated what it was sent

    final = run_mirador(["ask", "--chain", "fast:1b,big:8b", "--final", "why?"], tmp_path, server.host)
    assert final.stdout == "Considered final answer.\n"


def test_json_mode_tags_every_token(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "--chain", "fast:1b,big:8b", "--json", "q"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "stage_start" and kinds[-1] == "stage_end"
    tokens = [e for e in events if e["event"] == "token"]
    assert {(t["stage"], t["model"]) for t in tokens} == {(1, "fast:1b"), (2, "big:8b")}
    assert all(0 < t["confidence"] <= 1 for t in tokens)
    assert "".join(t["token"] for t in tokens if t["stage"] == 2) == "Considered final answer."
    ends = [e for e in events if e["event"] == "stage_end"]
    assert all(e["done_reason"] == "stop" and e["eval_count"] > 0 and "ttft_ms" in e for e in ends)


def test_stdin_is_material_appended_to_the_prompt(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "-m", "fast:1b", "summarize"], tmp_path, server.host, input="line one\nline two\n")
    assert result.returncode == 0, result.stderr
    alone = run_mirador(["ask", "-m", "fast:1b"], tmp_path, server.host, input="just stdin")
    assert alone.returncode == 0, alone.stderr
    first, second = server.chat_bodies()
    assert first["messages"][-1]["content"] == "summarize\n\nline one\nline two"
    assert second["messages"][-1]["content"] == "just stdin"


def test_empty_prompt_and_empty_stdin_is_a_usage_error(tmp_path):
    result = run_mirador(["ask"], tmp_path, "127.0.0.1:9", input="  \n")
    assert result.returncode == 2
    assert "no question" in result.stderr and "Traceback" not in result.stderr


def test_a_megabyte_of_stdin(server_factory, tmp_path):
    server = server_factory(MODELS)
    material = ("0123456789abcdef" * 64 + "\n") * 1000  # about 1 MB
    result = run_mirador(["ask", "-m", "fast:1b", "count"], tmp_path, server.host, input=material)
    assert result.returncode == 0, result.stderr
    [body] = server.chat_bodies()
    assert len(body["messages"][-1]["content"]) > 1_000_000
    assert len(exchanges(tmp_path)[0]["prompt"]) > 1_000_000


def test_invalid_utf8_on_stdin_is_replaced_and_said(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "-m", "fast:1b", "look"], tmp_path, server.host, input=b"ok \xff\xfe bytes")
    assert result.returncode == 0, result.stderr
    assert "not valid UTF-8" in result.stderr
    [body] = server.chat_bodies()
    assert body["messages"][-1]["content"] == "look\n\nok \ufffd\ufffd bytes"


def test_server_not_running_names_the_host_and_how_to_start(tmp_path, free_port):
    result = run_mirador(["ask", "-m", "fast:1b", "hi"], tmp_path, f"127.0.0.1:{free_port}")
    assert result.returncode == 3
    assert f"127.0.0.1:{free_port}" in result.stderr
    assert "ollama serve" in result.stderr and "mirador serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model_suggests_pulling_it(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "-m", "nope:7b", "hi"], tmp_path, server.host)
    assert result.returncode == 1
    assert "nope:7b" in result.stderr and "ollama pull nope:7b" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failing_stage_is_reported_and_the_chain_goes_on(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "--chain", "broken:1b,missing:1b,big:8b", "q"], tmp_path, server.host)
    assert result.returncode != 0
    assert "Considered final answer." in result.stdout
    assert "stage 1 (broken:1b) failed" in result.stderr and "stage 2 (missing:1b) failed" in result.stderr
    [row] = exchanges(tmp_path)
    assert row["status"] == "partial"
    broken, missing, big = stages(tmp_path, row["id"])
    assert broken["text"] and broken["error"] and broken["interrupted"]
    assert missing["error"] and big["error"] is None


def test_server_killed_mid_stream_keeps_the_partial_answer(server_factory, tmp_path):
    server = server_factory(MODELS)
    proc = spawn_mirador(["ask", "-m", "slow:1b", "long"], tmp_path, server.host)
    seen = read_some(proc)
    time.sleep(0.3)
    server.kill()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    assert b"lost the connection" in err or b"closed the stream" in err
    [row] = exchanges(tmp_path)
    assert row["status"] == "failed"
    [stage] = stages(tmp_path, row["id"])
    assert stage["interrupted"] and stage["text"].startswith(seen.decode())


def test_ctrl_c_keeps_what_was_streamed(server_factory, tmp_path):
    server = server_factory(MODELS)
    proc = spawn_mirador(["ask", "-m", "slow:1b", "long"], tmp_path, server.host)
    seen = read_some(proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    [row] = exchanges(tmp_path)
    assert row["status"] == "interrupted"
    [stage] = stages(tmp_path, row["id"])
    assert stage["interrupted"] and len(stage["text"]) >= len(seen.decode())
    assert (seen + out).decode().strip().startswith(stage["text"].strip()[:20])


def test_broken_config_names_file_line_and_key_and_is_kept(tmp_path):
    config = tmp_path / "config" / "config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("host: http://127.0.0.1:11434\nkeep_alive: [oops\n")
    result = run_mirador(["ask", "-m", "m", "hi"], tmp_path)
    assert result.returncode == 1
    assert str(config) in result.stderr and "line 2" in result.stderr
    config.write_text("host: http://127.0.0.1:11434\nkeep_alive: forever\n")
    result = run_mirador(["ask", "-m", "m", "hi"], tmp_path)
    assert result.returncode == 1
    assert "line 2" in result.stderr and "keep_alive" in result.stderr
    before = config.read_text()
    result = run_mirador(["config", "set", "chain", "a,b"], tmp_path)
    assert result.returncode == 1 and config.read_text() == before  # a broken file is never overwritten


def test_twenty_concurrent_asks_all_land_in_history(server_factory, tmp_path):
    server = server_factory(MODELS)
    procs = [spawn_mirador(["ask", "-m", "fast:1b", f"question {i}"], tmp_path, server.host) for i in range(20)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, [err for _, err in results]
    assert not any(b"locked" in err for _, err in results)
    assert sorted(r["prompt"] for r in exchanges(tmp_path)) == sorted(f"question {i}" for i in range(20))


def test_continue_a_conversation(server_factory, tmp_path):
    server = server_factory(MODELS)
    assert run_mirador(["ask", "-m", "fast:1b", "first"], tmp_path, server.host).returncode == 0
    assert run_mirador(["ask", "-m", "fast:1b", "-c", "second"], tmp_path, server.host).returncode == 0
    bodies = server.chat_bodies()
    assert bodies[1]["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Quick answer."},
        {"role": "user", "content": "second"},
    ]
    rows = exchanges(tmp_path)
    assert rows[0]["conversation_id"] == rows[1]["conversation_id"]
    missing = run_mirador(["ask", "-m", "fast:1b", "--cid", "999", "x"], tmp_path, server.host)
    assert missing.returncode == 1 and "999" in missing.stderr


def test_options_system_and_keep_alive_reach_the_server(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "-m", "fast:1b", "-s", "be terse", "-o", "temperature=0.1", "-o", "stop=END",
                          "--keep-alive", "-1", "--no-log", "hi"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    [body] = server.chat_bodies()
    assert body["options"] == {"temperature": 0.1, "stop": "END"}
    assert body["keep_alive"] == -1
    assert body["messages"][0] == {"role": "system", "content": "be terse"}
    assert not (tmp_path / "data" / "history.db").exists() or not exchanges(tmp_path)
    bad = run_mirador(["ask", "-m", "fast:1b", "-o", "novalue", "hi"], tmp_path, server.host)
    assert bad.returncode == 2
