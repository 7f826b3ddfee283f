"""`mirador preload --predict`, `mirador models --predict`, `mirador shell-hook`: real processes, real servers."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path

from clirun import run_mirador

from mirador.history import HistoryStore

MODELS = {"coder:7b": {"text": "code"}, "writer:8b": {"text": "prose"}, "chat:3b": {"text": "hi"}}


def seed_history(home: Path, model: str, days: int = 14) -> None:
    """A habit: `model` answers two questions at this hour every day of the last two weeks."""
    db_path = home / "data" / "history.db"
    HistoryStore(db_path).count()  # creates the schema
    conn = sqlite3.connect(db_path)
    now = time.time()
    with conn:
        conn.execute("INSERT INTO conversations (id, created_at) VALUES (1, ?)", (now,))
        for day in range(days, 0, -1):
            for minutes in (-20, 10):
                at = now - day * 86400 + minutes * 60
                used = model if minutes == 10 or day % 5 else "chat:3b"
                cur = conn.execute("INSERT INTO exchanges (conversation_id, created_at, prompt, status) "
                                   "VALUES (1, ?, 'q', 'complete')", (at,))
                conn.execute("INSERT INTO stages (exchange_id, idx, model, purpose, text) "
                             "VALUES (?, 0, ?, 'answer', 'a')",
                             (cur.lastrowid, used))
    conn.close()


def preloads(server) -> list[dict]:
    return [r["body"] for r in server.requests()
            if r["path"] == "/api/generate" and isinstance(r["body"], dict) and not r["body"].get("prompt")]


def test_preload_predict_warms_what_this_hour_usually_needs(server_factory, tmp_path):
    server = server_factory(MODELS)
    seed_history(tmp_path, "coder:7b")
    result = run_mirador(["preload", "--predict"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    assert [b["model"] for b in preloads(server)] == ["coder:7b"]
    assert preloads(server)[0]["keep_alive"] == "1h"
    assert "coder:7b: loaded" in result.stdout


def test_models_predict_shows_the_probabilities(server_factory, tmp_path):
    server = server_factory(MODELS)
    seed_history(tmp_path, "writer:8b")
    result = run_mirador(["models", "--predict", "--json"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    rows = {r["model"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(rows) == set(MODELS)
    assert rows["writer:8b"]["this_hour"] >= 0.7 and rows["writer:8b"]["preload"]
    assert rows["coder:7b"]["this_hour"] < 0.1 and not rows["coder:7b"]["preload"]
    table = run_mirador(["models", "--predict"], tmp_path, server.host)
    assert table.returncode == 0 and "writer:8b" in table.stdout and "preload" in table.stdout
    assert preloads(server) == []  # showing loads nothing


def test_preload_predict_without_history_loads_nothing(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["preload", "--predict"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    assert preloads(server) == [] and "no model is above the threshold" in result.stdout


def test_preload_predict_does_nothing_in_survival(server_factory, tmp_path):
    server = server_factory(MODELS)
    seed_history(tmp_path, "coder:7b")
    result = run_mirador(["preload", "--predict"], tmp_path, server.host, MIRADOR_POWER="battery:5")
    assert result.returncode == 0, result.stderr
    assert preloads(server) == [] and "survival" in result.stdout


def test_preload_needs_models_or_predict(tmp_path):
    result = run_mirador(["preload"], tmp_path)
    assert result.returncode == 2 and "--predict" in result.stderr and "Traceback" not in result.stderr
    both = run_mirador(["preload", "--predict", "x:1b"], tmp_path)
    assert both.returncode == 2


def test_shell_hook_prints_a_snippet_each_shell_parses(tmp_path):
    for shell in ("bash", "zsh", "fish"):
        result = run_mirador(["shell-hook", shell], tmp_path)
        assert result.returncode == 0 and "mirador preload --predict" in result.stdout
    snippet = run_mirador(["shell-hook", "bash"], tmp_path).stdout
    assert subprocess.run(["bash", "-n"], input=snippet, text=True).returncode == 0
    assert run_mirador(["shell-hook", "tcsh"], tmp_path).returncode == 2


def test_shell_hook_starts_the_preload_in_the_background(server_factory, tmp_path):
    server = server_factory(MODELS)
    seed_history(tmp_path, "coder:7b")
    snippet = run_mirador(["shell-hook", "bash"], tmp_path).stdout
    import os
    import sys

    from clirun import mirador_env

    env = mirador_env(tmp_path, server.host)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "mirador").write_text(f"#!/bin/sh\nexec {sys.executable} -m mirador \"$@\"\n")
    (shim / "mirador").chmod(0o755)
    env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
    started = time.monotonic()
    shell = subprocess.run(["bash", "-c", snippet + "echo ready"], env=env, capture_output=True, text=True, timeout=30)
    assert shell.stdout == "ready\n" and shell.stderr == ""  # silent, no job number
    assert time.monotonic() - started < 5  # the shell did not wait for the preload
    deadline = time.monotonic() + 30
    while not preloads(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [b["model"] for b in preloads(server)] == ["coder:7b"]


def test_history_latency_summarises_preload_hits_by_stage(server_factory, tmp_path):
    slow = {name: {"text": "x y z", "load_time": 0.4} for name in ("a:1b", "b:3b", "c:8b")}
    # Stage 1 streams long enough for the preloads to finish: a stage that starts while its model's
    # preload is still loading waits for it, and history records that as no hit (schema 3).
    slow["a:1b"]["rate"] = 5
    server = server_factory(slow)
    for _ in range(2):
        assert run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], tmp_path, server.host).returncode == 0
        for name in slow:  # every ask starts cold
            run_mirador(["unload", name], tmp_path, server.host)
    result = run_mirador(["history", "--latency", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {r["stage"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows[1]["preload_hits"] == 0 and rows[1]["median_wait_ms"] >= 300
    assert rows[2]["preload_hits"] == 2 and rows[3]["preload_hits"] == 2 and rows[2]["median_wait_ms"] < 50
    table = run_mirador(["history", "--latency"], tmp_path)
    assert table.returncode == 0 and "model warm" in table.stdout
