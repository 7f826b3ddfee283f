"""History keeps the system prompt each answer was given under (schema 4: every stage's DNA fragment),
and the training set uses it instead of today's DNA.

Real parts: `mirador ask` against a real `mirador serve --engine scripted` process, whose recorded request
bodies are what "sent" means here; real SQLite; the real `mirador history show` and `train --dry-run`."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from clirun import run_mirador

from mirador.history import ExchangeRecord, HistoryStore, StageRecord
from mirador.history.schema import SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_VERSION
from mirador.learn.dataset import build_dataset

MODELS = {
    "fast:1b": {"text": "Quick answer."},
    "echo:1b": {"text": "Echo:", "echo": True},
}


def system_of(body: dict) -> str | None:
    first = body["messages"][0]
    return first["content"] if first["role"] == "system" else None


def set_dna(home: Path, **fields: object) -> None:
    for key, value in fields.items():
        result = run_mirador(["dna", "set", key.replace("__", "."), str(value)], home)
        assert result.returncode == 0, result.stderr


def ask(home: Path, server, *args: str) -> None:
    result = run_mirador(["ask", *args], home, server.host)
    assert result.returncode == 0, result.stderr


def shown(home: Path, exchange: str = "last") -> dict:
    result = run_mirador(["history", "show", exchange, "--json"], home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def db_path(home: Path) -> Path:
    return home / "data" / "history.db"


def test_ask_records_the_dna_fragment_each_stage_was_sent(server_factory, tmp_path):
    server = server_factory(MODELS)
    set_dna(tmp_path, tone="formal", language="French", verbosity=0.9)
    ask(tmp_path, server, "-m", "echo:1b", "-s", "You are terse.", "hi")
    [body] = server.chat_bodies()
    one = shown(tmp_path)
    # A single stage's system message is --system then the fragment: the record is that message, to the byte.
    assert one["system_prompt"] == system_of(body)
    assert one["system_prompt"] == "You are terse.\n\n" + one["stages"][0]["dna_fragment"]
    assert "Answer in French." in one["stages"][0]["dna_fragment"]

    ask(tmp_path, server, "--chain", "fast:1b,echo:1b", "-s", "You are terse.", "why?")
    ack, final = server.chat_bodies()[1:]
    chain = shown(tmp_path)
    first, last = (stage["dna_fragment"] for stage in chain["stages"])
    # Each stage's own fragment, as its request carried it (the chain puts it after the purpose line).
    assert system_of(ack).endswith("\n\n" + first) and system_of(final).endswith("\n\n" + last)
    assert first != last and "Be exhaustive" in last and "Be exhaustive" not in first  # stage 1 stays brief
    assert chain["system_prompt"] == "You are terse.\n\n" + last  # the answering stage's

    text = run_mirador(["history", "show", "last"], tmp_path)
    assert text.returncode == 0, text.stderr
    line = next(x for x in text.stdout.splitlines() if x.startswith("system prompt: "))
    assert line.startswith("system prompt: You are terse. The user's preferences:")
    assert f"({len(chain['system_prompt'])} characters; --json shows it whole)" in line


def test_a_later_dna_change_leaves_the_recorded_prompt_and_old_rows_fall_back(server_factory, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("MIRADOR_HOME", str(tmp_path))  # build_dataset reads the current DNA from there
    server = server_factory(MODELS)
    set_dna(tmp_path, tone="formal")
    ask(tmp_path, server, "-m", "echo:1b", "Tell me about bread.")
    [body] = server.chat_bodies()
    sent = system_of(body)
    assert "Use a formal tone." in sent
    with HistoryStore(db_path(tmp_path)) as store:
        asked = store.last_exchange_id()
        store.add_rating(asked, 5)
        # An answer as history held it before schema 4: no fragment recorded.
        old, _ = store.save_exchange(ExchangeRecord(
            "Tell me about trains.", "complete", [StageRecord(0, "echo:1b", "answer", 0.8, "About trains.")],
            system="You are terse.", created_at=time.time() - 86400))
        store.add_rating(old, 5)
    set_dna(tmp_path, tone="direct")  # the DNA changes after the answer
    with HistoryStore(db_path(tmp_path)) as store:
        data = build_dataset(store, classify=False, embedder=None)
    examples = {e.exchange_id: e for e in data.train + data.valid}
    assert examples[asked].system == sent and not examples[asked].reconstructed
    assert "Be direct" not in examples[asked].system
    # The old row had nothing recorded: today's DNA stands in, and the summary counts it.
    assert examples[old].reconstructed and examples[old].system.startswith("You are terse.\n\n")
    assert "Be direct; no pleasantries." in examples[old].system
    summary = data.summary()
    assert summary["reconstructed_system_prompts"] == 1 and summary["dna"].startswith("current DNA")
    assert summary["dna_changed_since"] == 1  # the old answer is older than the DNA edit; the asked one is not counted


def test_no_dna_records_only_the_system_text_or_nothing(server_factory, tmp_path):
    server = server_factory(MODELS)
    ask(tmp_path, server, "-m", "echo:1b", "-s", "Be a pirate.", "hi")  # no DNA file yet
    set_dna(tmp_path, tone="formal")
    ask(tmp_path, server, "--no-dna", "-m", "echo:1b", "-s", "Be a pirate.", "hello")
    ask(tmp_path, server, "--no-dna", "-m", "echo:1b", "hey")
    bodies = server.chat_bodies()
    assert [system_of(b) for b in bodies] == ["Be a pirate.", "Be a pirate.", None]
    records = [shown(tmp_path, str(n)) for n in (1, 2, 3)]
    assert [r["stages"][0]["dna_fragment"] for r in records] == ["", "", ""]  # recorded: no DNA, not unknown
    assert [r["system_prompt"] for r in records] == ["Be a pirate.", "Be a pirate.", ""]
    plain = run_mirador(["history", "show", "3"], tmp_path).stdout
    assert "system prompt: none (no DNA, no --system)" in plain
    with HistoryStore(db_path(tmp_path)) as store:
        for n in (1, 2, 3):
            store.add_rating(n, 5)
        data = build_dataset(store, classify=False, embedder=None)
    # The DNA that exists now is not added to answers that were given without one.
    assert {e.prompt: e.system for e in data.train + data.valid} == {
        "hi": "Be a pirate.", "hello": "Be a pirate.", "hey": None}
    assert data.reconstructed == 0 and data.dna == "recorded with each answer"


def test_a_version_3_history_migrates_and_its_rows_fall_back_to_the_current_dna(tmp_path):
    db = db_path(tmp_path)
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    for statement in SCHEMA_V1 + SCHEMA_V2 + SCHEMA_V3:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 3")
    conn.execute("INSERT INTO conversations (id, created_at) VALUES (1, 1760000000)")
    for n, prompt in ((1, "What is a monoid?"), (2, "How do I reverse a list in Python?")):
        conn.execute("INSERT INTO exchanges (id, conversation_id, created_at, prompt, system, status)"
                     " VALUES (?, 1, ?, ?, 'You are terse.', 'complete')", (n, 1760000000 + n, prompt))
        conn.execute("INSERT INTO stages (exchange_id, idx, model, purpose, text, preload_hit)"
                     " VALUES (?, 0, 'smollm2:135m', 'answer', ?, 1)", (n, f"answer {n}"))
        conn.execute("INSERT INTO ratings (exchange_id, score, created_at) VALUES (?, 5, 1760000100)", (n,))
    conn.commit()
    conn.close()

    with HistoryStore(db) as store:  # opening migrates; the old rows keep NULL
        old = store.get(1)
        assert old.stages[0].dna_fragment is None and old.system_prompt is None
        assert old.stages[0].preload_hit is True and old.final_text == "answer 1"
        new, _ = store.save_exchange(ExchangeRecord(
            "Why is the sky blue?", "complete",
            [StageRecord(0, "smollm2:135m", "answer", 0.8, "Rayleigh.", dna_fragment="The user's preferences: X.")]))
        store.add_rating(new, 5)
        assert store.get(new).system_prompt == "The user's preferences: X."
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    conn.close()

    assert "system prompt: not recorded" in run_mirador(["history", "show", "1"], tmp_path).stdout
    assert shown(tmp_path, "1")["system_prompt"] is None
    set_dna(tmp_path, tone="formal")
    result = run_mirador(["train", "--dry-run", "--json"], tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["examples"] == 3 and summary["reconstructed_system_prompts"] == 2
    assert summary["dna"].startswith("current DNA") and summary["dna_changed_since"] == 2
    text = run_mirador(["train", "--dry-run"], tmp_path, timeout=180).stdout
    assert "reconstructed_system_prompts: 2" in text
