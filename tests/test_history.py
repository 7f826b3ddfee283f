"""History store (mirador.history) and the `mirador history` command."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mirador.errors import MiradorError
from mirador.history import (
    SCHEMA_VERSION,
    ExchangeRecord,
    HistoryStore,
    StageRecord,
    fts_query,
)

REPO = Path(__file__).resolve().parents[1]


def stages(*texts: str, models: tuple[str, ...] = ("llama3.2:1b", "llama3.2:3b", "llama3.1:8b")) -> list[StageRecord]:
    purposes = ("quick_ack", "core_analysis", "deep_synthesis")
    return [
        StageRecord(index=i, model=models[i % len(models)], purpose=purposes[i % 3], confidence=0.3 + 0.3 * i,
                    text=text, done_reason="stop", started_at=1_700_000_000.0 + i, ttft_ms=100.0 + i,
                    load_ms=20.0, prompt_eval_count=12, eval_count=40, eval_ms=800.0, tokens_per_s=50.0,
                    total_ms=900.0)
        for i, text in enumerate(texts)
    ]


@pytest.fixture
def store(tmp_path: Path):
    with HistoryStore(tmp_path / "data" / "history.db") as history:
        yield history


# -- the store -----------------------------------------------------------------------------------


def test_save_and_get_round_trip(store: HistoryStore) -> None:
    record = ExchangeRecord(prompt="what is a monad?", status="complete", stages=stages("Hm.", "A monoid…"),
                            system="be brief", options={"temperature": 0.2})
    before = time.time()
    exchange_id, conversation_id = store.save_exchange(record)
    got = store.get(exchange_id)
    assert got is not None
    assert (got.id, got.conversation_id, got.status, got.prompt) == (exchange_id, conversation_id, "complete",
                                                                      "what is a monad?")
    assert got.system == "be brief" and got.options == {"temperature": 0.2}
    assert before <= got.created_at <= time.time()
    assert got.stages == record.stages
    assert got.final_text == "A monoid…" and got.models == ["llama3.2:1b", "llama3.2:3b"]
    assert got.ratings == [] and got.rating is None
    assert store.get(exchange_id + 1) is None


def test_schema_version_and_wal(store: HistoryStore, tmp_path: Path) -> None:
    store.last_exchange_id()  # opens the file
    conn = sqlite3.connect(tmp_path / "data" / "history.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(MiradorError, match="newer Mirador"):
        HistoryStore(db).recent()


def test_a_file_that_is_not_a_database_is_a_mirador_error(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MiradorError) as caught:
        HistoryStore(db).recent()
    assert caught.value.exit_code == 1 and "move it aside" in (caught.value.hint or "")


def test_conversations_and_messages(store: HistoryStore) -> None:
    assert store.last_conversation_id() is None and store.last_exchange_id() is None
    first, conversation = store.save_exchange(ExchangeRecord("q1", "complete", stages("a1 draft", "a1 final", "")))
    assert store.conversation_exists(conversation) and not store.conversation_exists(conversation + 1)
    store.save_exchange(ExchangeRecord("q2 failed", "failed", [], conversation_id=conversation))
    third, same = store.save_exchange(ExchangeRecord("q3", "partial", stages("a3 partial"),
                                                     conversation_id=conversation))
    other_id, other = store.save_exchange(ExchangeRecord("elsewhere", "complete", stages("x")))
    assert same == conversation and other != conversation
    assert store.conversation_messages(conversation) == [
        {"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1 final"},
        {"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3 partial"},
    ]
    assert store.last_conversation_id() == other and store.last_exchange_id() == other_id
    assert store.conversation_messages(9999) == []


def test_a_vanished_conversation_does_not_lose_the_answer(store: HistoryStore) -> None:
    exchange_id, conversation = store.save_exchange(ExchangeRecord("q", "complete", stages("a"),
                                                                   conversation_id=42))
    assert conversation == 42 and store.conversation_exists(42)
    assert store.get(exchange_id).conversation_id == 42


def test_recent_is_newest_first_with_models_and_limit(store: HistoryStore) -> None:
    for n in range(5):
        store.save_exchange(ExchangeRecord(f"question {n}", "complete", stages("a", "b"),
                                           created_at=1_700_000_000.0 + n))
    recent = store.recent(limit=3)
    assert [s.prompt_start for s in recent] == ["question 4", "question 3", "question 2"]
    assert recent[0].models == ["llama3.2:1b", "llama3.2:3b"] and recent[0].status == "complete"
    assert store.count() == 5


def test_ratings_are_all_kept_and_the_latest_counts(store: HistoryStore) -> None:
    exchange_id, _ = store.save_exchange(ExchangeRecord("q", "complete", stages("a")))
    store.add_rating(exchange_id, 4)
    store.add_rating(exchange_id, 2, note="too long")
    got = store.get(exchange_id)
    assert [(r.score, r.note) for r in got.ratings] == [(4, None), (2, "too long")]
    assert got.rating == 2
    summary = store.recent()[0]
    assert (summary.rating, summary.rating_count) == (2, 2)


def test_rating_a_missing_exchange_is_a_user_error(store: HistoryStore) -> None:
    with pytest.raises(MiradorError) as caught:
        store.add_rating(12345, 3)
    assert caught.value.exit_code == 1 and "mirador history" in caught.value.hint
    exchange_id, _ = store.save_exchange(ExchangeRecord("q", "complete", stages("a")))
    for bad in (0, 6, True, "3"):
        with pytest.raises(MiradorError):
            store.add_rating(exchange_id, bad)  # type: ignore[arg-type]
    assert store.get(exchange_id).ratings == []


def test_delete_exchange_removes_it_everywhere(store: HistoryStore, tmp_path: Path) -> None:
    keep, conversation = store.save_exchange(ExchangeRecord("keep zebra", "complete", stages("a")))
    gone, lonely = store.save_exchange(ExchangeRecord("forget zebra", "complete", stages("zebra answer")))
    store.add_rating(gone, 5)
    assert store.delete_exchange(gone) is True and store.delete_exchange(gone) is False
    assert store.get(gone) is None and [s.id for s in store.search("zebra")] == [keep]
    assert not store.conversation_exists(lonely) and store.conversation_exists(conversation)
    conn = sqlite3.connect(tmp_path / "data" / "history.db")
    for table, column in (("stages", "exchange_id"), ("ratings", "exchange_id"), ("exchanges_fts", "rowid")):
        sql = f"SELECT count(*) FROM {table} WHERE {column} = ?"
        assert conn.execute(sql, (gone,)).fetchone()[0] == 0
    conn.close()


def test_invalid_unicode_never_breaks_saving(store: HistoryStore) -> None:
    broken = b"caf\xe9 \xff\xfe raw bytes".decode("utf-8", errors="surrogateescape")
    prompt = f"{broken} lone \ud800 pair \ud83d\ude00 nul \x00 end"
    record = ExchangeRecord(prompt=prompt, status="complete",
                            stages=[StageRecord(0, "m\udcff", "answer", 0.5, text=f"answer {broken}",
                                                error="oops \udc80")],
                            system="sys \ud800", options={"stop": ["\udcff"], "odd": object()})
    exchange_id, _ = store.save_exchange(record)
    got = store.get(exchange_id)
    got.prompt.encode("utf-8")  # everything read back is valid text
    got.stages[0].text.encode("utf-8")
    assert got.prompt.startswith("caf\ufffd \ufffd\ufffd raw bytes lone \ufffd pair 😀 nul \x00 end")
    assert got.stages[0].model == "m\ufffd"
    assert [s.id for s in store.search("raw bytes")] == [exchange_id]


def test_a_one_megabyte_prompt(store: HistoryStore) -> None:
    prompt = ("lorem ipsum dolor sit amet " * 40_000)[:1_000_000] + " needleword"
    exchange_id, _ = store.save_exchange(ExchangeRecord(prompt, "complete", stages("short answer")))
    assert store.get(exchange_id).prompt == prompt
    assert len(store.recent()[0].prompt_start) == 200
    assert [s.id for s in store.search("needleword")] == [exchange_id]


HOSTILE = [
    'what\'s "this" -x OR', '"', '""', "'", "-", "*", "OR", "AND NOT", "NEAR(a b)", "a:b", "col:",
    "prompt:secret", "(unbalanced", "^start", "{a b}", "a + b", '"unterminated', "\\", "%_", "   ",
    "", "💥", "\x00", "x" * 5000, "; DROP TABLE exchanges; --",
]


@pytest.mark.parametrize("query", HOSTILE)
def test_search_survives_hostile_queries(store: HistoryStore, query: str) -> None:
    store.save_exchange(ExchangeRecord("what's this x or y", "complete", stages("an answer")))
    assert isinstance(store.search(query), list)
    assert store.count() == 1


def test_search_matches_words_in_prompts_and_answers(store: HistoryStore) -> None:
    wanted, _ = store.save_exchange(ExchangeRecord("what's this x or y", "complete", stages("nothing")))
    in_answer, _ = store.save_exchange(ExchangeRecord("other", "complete", stages("the kubernetes operator")))
    store.save_exchange(ExchangeRecord("unrelated", "complete", stages("nope")))
    assert [s.id for s in store.search('what\'s "this" -x OR')] == [wanted]
    assert [s.id for s in store.search("Kubernetes oper")] == [in_answer]  # case-free, word prefixes
    assert "kubernetes" in store.search("kubernetes")[0].snippet
    assert store.search("missingword") == []
    assert fts_query('a "b" -') == '"a"* """b"""*'


def test_permissions_are_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "data" / "history.db"
    with HistoryStore(db) as history:
        history.save_exchange(ExchangeRecord("q", "complete", stages("a")))
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


def test_a_world_readable_file_is_tightened(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    db.touch()
    os.chmod(db, 0o644)
    HistoryStore(db).recent()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def test_open_default_uses_mirador_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRADOR_HOME", str(tmp_path))
    with HistoryStore.open_default() as history:
        history.save_exchange(ExchangeRecord("q", "complete", stages("a")))
    data_dir = tmp_path / "data"
    assert (data_dir / "history.db").exists()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_usable_from_another_thread(store: HistoryStore) -> None:
    store.recent()  # the connection is made on this thread
    results: list = []
    worker = threading.Thread(target=lambda: results.append(
        store.save_exchange(ExchangeRecord("from a thread", "complete", stages("a")))))
    worker.start()
    worker.join()
    assert results and store.get(results[0][0]).prompt == "from a thread"


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mirador.history import ExchangeRecord, HistoryStore, StageRecord
    db, go, n, per_child = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    Path(f"{go}.{n}.ready").touch()
    while not go.exists():
        time.sleep(0.001)
    store = HistoryStore(db)
    for k in range(per_child):
        stages = [StageRecord(i, f"model{i}", "answer", 0.5, f"text {n} {k} {i}") for i in range(3)]
        store.save_exchange(ExchangeRecord(f"child {n} question {k}", "complete", stages))
    store.close()
""")


def test_twenty_processes_write_at_once_and_lose_nothing(tmp_path: Path) -> None:
    db, go, children, per_child = tmp_path / "data" / "history.db", tmp_path / "go", 20, 3
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(go), str(n), str(per_child)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for n in range(children)]
    try:
        deadline = time.monotonic() + 30
        # All children imported and waiting, so that they open a fresh file and write in the same instant.
        while sum(Path(f"{go}.{n}.ready").exists() for n in range(children)) < children:
            assert time.monotonic() < deadline, "children did not start"
            time.sleep(0.01)
        go.touch()
        outputs = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert "locked" not in err and "locked" not in out
    with HistoryStore(db) as history:
        assert history.count() == children * per_child
        prompts = set()
        for exchange in history.iter_exchanges():
            prompts.add(exchange.prompt)
            n, k = exchange.prompt.split()[1::2]
            assert [s.text for s in exchange.stages] == [f"text {n} {k} {i}" for i in range(3)]
        assert prompts == {f"child {n} question {k}" for n in range(children) for k in range(per_child)}
        assert len(history.search("child question")) == 20  # the FTS rows were written with them


# -- the command ---------------------------------------------------------------------------------


def mirador(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MIRADOR_DEBUG"}
    env["MIRADOR_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "mirador", "history", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=30)


@pytest.fixture
def filled_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MIRADOR_HOME", str(tmp_path))
    with HistoryStore.open_default() as history:
        first, conversation = history.save_exchange(ExchangeRecord(
            "how do I reverse a list in python?\nsecond line \x1b[31mred", "complete",
            stages("Use reversed().", "Use `lst[::-1]` or [bold]reversed[/bold].")))
        history.save_exchange(ExchangeRecord("and in rust?", "interrupted",
                                             [StageRecord(0, "llama3.1:8b", "answer", 0.8, "Call .rev()",
                                                          interrupted=True, done_reason=None)],
                                             conversation_id=conversation))
        history.add_rating(first, 5)
        history.add_rating(first, 3, note="verbose")
    return tmp_path


def test_cli_empty_history_is_friendly(tmp_path: Path) -> None:
    result = mirador(tmp_path)
    assert result.returncode == 0 and "No history yet" in result.stdout
    assert not (tmp_path / "data" / "history.db").exists()  # looking does not create a file
    assert mirador(tmp_path, "--json").stdout == ""


def test_cli_list_in_a_pipe_is_plain_text(filled_home: Path) -> None:
    result = mirador(filled_home)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "when", "status", "rating", "models", "prompt"]
    assert lines[1].split()[0] == "2" and "interrupted" in lines[1] and "and in rust?" in lines[1]
    assert "3 (2)" in lines[2] and "llama3.2:1b > llama3.2:3b" in lines[2]
    assert "how do I reverse a list in python? second line" in lines[2]
    assert len(mirador(filled_home, "-n", "1").stdout.splitlines()) == 2


def test_cli_list_json_and_search(filled_home: Path) -> None:
    records = [json.loads(line) for line in mirador(filled_home, "--json").stdout.splitlines()]
    assert [r["id"] for r in records] == [2, 1]
    assert records[1]["rating"] == 3 and records[1]["models"] == ["llama3.2:1b", "llama3.2:3b"]
    found = mirador(filled_home, "-q", "reverse", "--json").stdout.splitlines()
    assert [json.loads(line)["id"] for line in found] == [1]
    hostile = mirador(filled_home, "-q", 'what\'s "this" -x OR')
    assert hostile.returncode == 0 and "Nothing in the history matches" in hostile.stdout


def test_cli_show_plain(filled_home: Path) -> None:
    result = mirador(filled_home, "show", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "\x1b" not in out
    assert "how do I reverse a list in python?" in out and "rated 3" in out
    assert "stage 1/2 · llama3.2:1b · quick_ack · confidence 0.30" in out
    assert "first token 100 ms" in out and "done: stop" in out and "50.0 tok/s" in out
    assert "Use `lst[::-1]` or [bold]reversed[/bold]." in out
    assert "5/5" in out and "3/5  verbose" in out
    assert "INTERRUPTED" in mirador(filled_home, "show", "last").stdout


def test_cli_show_json(filled_home: Path) -> None:
    record = json.loads(mirador(filled_home, "show", "1", "--json").stdout)
    assert record["id"] == 1 and record["rating"] == 3 and len(record["ratings"]) == 2
    assert [s["model"] for s in record["stages"]] == ["llama3.2:1b", "llama3.2:3b"]
    assert json.loads(mirador(filled_home, "--json", "show", "2").stdout)["stages"][0]["interrupted"] is True


def test_cli_show_unknown_id_is_a_user_error(filled_home: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    result = mirador(filled_home, "show", "999")
    assert result.returncode == 1
    assert "no exchange with id 999" in result.stderr and "`mirador history` lists the ids" in result.stderr
    assert "Traceback" not in result.stderr
    assert mirador(tmp_path_factory.mktemp("empty"), "show", "1").returncode == 1
    assert mirador(filled_home, "show", "abc").returncode == 2
