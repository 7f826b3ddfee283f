"""History schema 3: each stage's preload hit and wait, recorded by real `mirador ask` processes against a
real scripted server, and `mirador history --latency` over new and old rows."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from clirun import run_mirador
from clirun import stage_rows as stages

from mirador.history import ExchangeRecord, HistoryStore, StageRecord
from mirador.history.schema import SCHEMA_V1, SCHEMA_V2

SIZE = {"parameter_size": "0.5B", "quantization_level": "F16"}


def models(first_load: float, later_load: float, first_rate: float = 0) -> dict:
    return {
        "a:1b": {"text": "one two three four five six", "load_time": first_load, "rate": first_rate, **SIZE},
        "b:3b": {"text": "analysis of the question", "load_time": later_load, **SIZE},
        "c:8b": {"text": "the final synthesis", "load_time": later_load, **SIZE},
    }


def ask(server, home: Path, **env: str) -> list[sqlite3.Row]:
    result = run_mirador(["ask", "--chain", "a:1b,b:3b,c:8b", "why?"], home, server.host, **env)
    assert result.returncode == 0, result.stderr
    return stages(home)[-3:]


def test_three_stages_with_and_without_preloading(server_factory, tmp_path):
    # Stage 1 streams for a while after its load: the later models' preloads end within it.
    server = server_factory(models(first_load=0.8, later_load=0.8, first_rate=10))
    first, second, third = ask(server, tmp_path / "preloaded")
    # Stage 1 loaded its model cold; stages 2 and 3 found theirs loaded (preloaded while stage 1 ran).
    assert first["preload_hit"] == 0 and first["wait_ms"] >= first["load_ms"] > 0
    assert second["preload_hit"] == 1 and third["preload_hit"] == 1
    assert second["wait_ms"] < first["wait_ms"] / 4 and third["wait_ms"] < first["wait_ms"] / 4
    server.stop()
    server = server_factory(models(first_load=0.8, later_load=0.8))
    cold = ask(server, tmp_path / "cold", MIRADOR_PRELOAD="0")
    assert [row["preload_hit"] for row in cold] == [0, 0, 0]
    assert all(row["wait_ms"] >= row["load_ms"] > 0 for row in cold)  # the wait holds the load
    assert cold[1]["wait_ms"] > 4 * second["wait_ms"]


def test_a_stage_that_queued_behind_its_preload_is_no_hit(server_factory, tmp_path):
    # Stage 1 is short, the later models take long to load: stage 2 starts while its preload is
    # still loading, waits for it in the server's queue and reports no load of its own.
    server = server_factory(models(first_load=0.0, later_load=2.0, first_rate=10))
    first, second, _ = ask(server, tmp_path)
    calls = [(r["path"], r["body"].get("model")) for r in server.requests() if isinstance(r["body"], dict)]
    assert calls.index(("/api/generate", "b:3b")) < calls.index(("/api/chat", "b:3b"))
    assert (second["load_ms"] or 0) < 50  # the server loaded it for the preload, not for this request
    assert second["preload_hit"] == 0 and second["wait_ms"] > 10 * max(first["wait_ms"], 1.0)


def test_history_show_and_latency_use_the_recorded_columns(server_factory, tmp_path):
    server = server_factory(models(first_load=0.5, later_load=0.5, first_rate=10))
    ask(server, tmp_path)
    shown = run_mirador(["history", "show", "last"], tmp_path)
    assert shown.stdout.count("model was loaded") == 2 and shown.stdout.count("model was not loaded") == 1
    assert "waited" in shown.stdout
    latency = [json.loads(line) for line in run_mirador(["history", "--latency", "--json"], tmp_path).stdout.split("\n")
               if line.strip()]
    by_stage = {row["stage"]: row for row in latency}
    assert by_stage[1]["preload_hits"] == 0 and by_stage[2]["preload_hits"] == 1
    assert all(row["recorded"] == 1 and row["derived"] == 0 for row in latency)


def test_old_rows_are_derived_and_a_version_2_history_migrates(tmp_path):
    home = tmp_path / "home"
    db_path = home / "data" / "history.db"
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    for statement in SCHEMA_V1 + SCHEMA_V2:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute("INSERT INTO conversations (id, created_at) VALUES (1, strftime('%s','now'))")
    conn.execute("INSERT INTO exchanges (id, conversation_id, created_at, prompt, status)"
                 " VALUES (1, 1, strftime('%s','now'), 'old', 'complete')")
    conn.executemany("INSERT INTO stages (exchange_id, idx, model, purpose, ttft_ms, load_ms)"
                     " VALUES (1, ?, ?, ?, ?, ?)",
                     [(0, "a:1b", "quick_ack", 900.0, 800.0), (1, "b:3b", "deep_synthesis", 40.0, 2.0)])
    conn.commit()
    conn.close()
    before = {r["stage"]: r for r in map(json.loads, filter(None, run_mirador(
        ["history", "--latency", "--json"], home).stdout.split("\n")))}
    assert before[1]["preload_hits"] == 0 and before[2]["preload_hits"] == 1  # derived from load_ms
    assert before[1]["median_wait_ms"] == 800.0 and before[1]["derived"] == 1
    with HistoryStore(db_path) as store:  # opening migrates to schema 3; the old row keeps NULLs
        store.save_exchange(ExchangeRecord("new", "complete", [StageRecord(
            0, "a:1b", "answer", 0.8, "hi", ttft_ms=30.0, load_ms=0.0, total_ms=40.0, preload_hit=False,
            wait_ms=25.0)]))
        old, new = store.get(1), store.get(2)
    assert old.stages[0].preload_hit is None and new.stages[0].preload_hit is False and new.stages[0].wait_ms == 25.0
    after = {r["stage"]: r for r in map(json.loads, filter(None, run_mirador(
        ["history", "--latency", "--json"], home).stdout.split("\n")))}
    assert after[1]["stages"] == 2 and after[1]["preload_hits"] == 0 and after[1]["recorded"] == 1
