"""`mirador memory`: forget (history, its full-text index and Chroma), rebuild, a corrupt store, a Chroma server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from clirun import run_mirador
from memoryhelp import MODELS, save_exchanges, wait_observed

from mirador.history import HistoryStore

SECRET = "zanzibarquokka"


def export(home: Path, **env: str) -> list[dict]:
    result = run_mirador(["memory", "export", "-"], home, **env)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def chroma_ids(home: Path) -> set[int]:
    code = ("import chromadb,sys; c=chromadb.PersistentClient(path=sys.argv[1]);"
            "col=c.get_collection('mirador_patterns');"
            "print(' '.join(col.get(include=[])['ids']));"
            "print(len(col.get(where_document={'$contains': sys.argv[2]})['ids']))")
    out = subprocess.run([sys.executable, "-c", code, str(home / "data" / "chroma"), SECRET],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[1].strip() == "0" or out[0].strip(), out
    return {int(i) for i in out[0].split()}, int(out[1])


def test_forget_removes_the_text_from_chroma_and_from_the_full_text_index(tmp_path):
    save_exchanges(tmp_path, [(f"how do I feed my {SECRET} in winter", ["llama3.2:1b"]),
                              ("why is the sky blue", ["llama3.2:1b"])])
    assert run_mirador(["rate", "1", "4"], tmp_path).returncode == 0
    history = HistoryStore(tmp_path / "data" / "history.db")
    assert [s.id for s in history.search(SECRET)] == [1]
    assert chroma_ids(tmp_path) == ({1, 2}, 1)

    forgot = run_mirador(["memory", "forget", "1"], tmp_path)
    assert forgot.returncode == 0, forgot.stderr
    assert history.search(SECRET) == [] and history.get(1) is None
    assert chroma_ids(tmp_path) == ({2}, 0)  # neither the pattern nor the text is left
    assert json.loads(run_mirador(["memory", "stats", "--json"], tmp_path).stdout)["well_rated"] == 0
    missing = run_mirador(["memory", "forget", "1"], tmp_path)
    assert missing.returncode == 1 and "no exchange with id 1" in missing.stderr
    history.close()


def test_forget_before_a_date(tmp_path):
    save_exchanges(tmp_path, [("an old question about rust", ["llama3.2:1b"])], created_at=1_600_000_000)
    save_exchanges(tmp_path, [("a new question about go", ["llama3.2:1b"])])
    assert run_mirador(["memory", "stats"], tmp_path).returncode == 0  # observes both
    forgot = run_mirador(["memory", "forget", "--before", "2021-01-01"], tmp_path)
    assert forgot.returncode == 0, forgot.stderr and "forgot 1 exchange" in forgot.stdout
    assert [p["exchange_id"] for p in export(tmp_path)] == [2]
    bad = run_mirador(["memory", "forget", "--before", "last tuesday"], tmp_path)
    assert bad.returncode == 2 and "not a date" in bad.stderr
    neither = run_mirador(["memory", "forget"], tmp_path)
    assert neither.returncode == 2


def test_rebuild_re_embeds_everything_from_history(tmp_path):
    save_exchanges(tmp_path, [("fix my python bug", ["qwen2.5-coder:7b"]), ("a poem about rain", ["mistral:7b"])])
    assert run_mirador(["rate", "1", "2"], tmp_path).returncode == 0
    rebuilt = run_mirador(["memory", "rebuild"], tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr and "2 patterns from history" in rebuilt.stdout
    patterns = {p["exchange_id"]: p for p in export(tmp_path)}
    assert set(patterns) == {1, 2} and patterns[1]["rating"] == 2 and patterns[2]["rating"] == 0
    stats = json.loads(run_mirador(["memory", "stats", "--json"], tmp_path).stdout)
    assert stats["embedder"] == "local:all-MiniLM-L6-v2"
    assert {s["model"] for s in stats["scores"]} == {"qwen2.5-coder:7b"}


def test_a_corrupt_store_never_breaks_ask_and_rebuild_restores_it(server_factory, tmp_path):
    server = server_factory(MODELS)
    asked = run_mirador(["ask", "fix the bug in my python sort function"], tmp_path, server.host)
    assert asked.returncode == 0, asked.stderr
    assert run_mirador(["rate", "5"], tmp_path, server.host).returncode == 0
    sqlite_file = tmp_path / "data" / "chroma" / "chroma.sqlite3"
    sqlite_file.write_bytes(b"this is not a database" * 1000)

    asked = run_mirador(["ask", "my python sort function has a bug, fix it"], tmp_path, server.host)
    assert asked.returncode == 0, asked.stderr
    assert "[qwen2.5-coder:7b] answer." in asked.stdout or "answer." in asked.stdout
    warnings = [line for line in asked.stderr.splitlines() if "memory" in line]
    assert len(warnings) == 1 and "warning" in warnings[0] and "Traceback" not in asked.stderr

    rebuilt = run_mirador(["memory", "rebuild"], tmp_path, server.host)
    assert rebuilt.returncode == 0, rebuilt.stderr and "2 patterns from history" in rebuilt.stdout
    search = run_mirador(["memory", "search", "--json", "python sort bug"], tmp_path, server.host)
    assert search.returncode == 0 and len(search.stdout.splitlines()) == 2
    asked = run_mirador(["ask", "sort a list of dicts in python by key"], tmp_path, server.host)
    assert asked.returncode == 0 and "memory" not in asked.stderr
    wait_observed(tmp_path, 3)


@pytest.fixture
def chroma_server(tmp_path: Path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    chroma = Path(sys.executable).parent / "chroma"
    log = open(tmp_path / "chroma.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(chroma), "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1).read()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "chroma.log").read_text()
            time.sleep(0.2)
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_memory_on_a_chroma_server(chroma_server, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    save_exchanges(home, [("fix my python bug", ["qwen2.5-coder:7b"]), ("a poem about rain", ["mistral:7b"])])
    rated = run_mirador(["rate", "1", "5"], home, MIRADOR_MEMORY_URL=chroma_server)
    assert rated.returncode == 0, rated.stderr
    assert not (home / "data" / "chroma").exists()  # nothing embedded locally
    stats = json.loads(run_mirador(["memory", "stats", "--json"], home, MIRADOR_MEMORY_URL=chroma_server).stdout)
    assert stats["location"] == chroma_server and stats["patterns"] == 2 and stats["rated"] == 1
    found = run_mirador(["memory", "search", "--json", "python bug"], home, MIRADOR_MEMORY_URL=chroma_server)
    assert json.loads(found.stdout.splitlines()[0])["id"] == 1
    forgot = run_mirador(["memory", "forget", "1"], home, MIRADOR_MEMORY_URL=chroma_server)
    assert forgot.returncode == 0, forgot.stderr
    assert [p["exchange_id"] for p in export(home, MIRADOR_MEMORY_URL=chroma_server)] == [2]
    rebuilt = run_mirador(["memory", "rebuild"], home, MIRADOR_MEMORY_URL=chroma_server)
    assert rebuilt.returncode == 0 and "1 patterns" in rebuilt.stdout


def test_an_unreachable_chroma_server_costs_a_warning_not_the_rating(tmp_path, free_port):
    save_exchanges(tmp_path, [("fix my python bug", ["qwen2.5-coder:7b"])])
    rated = run_mirador(["rate", "4"], tmp_path, MIRADOR_MEMORY_URL=f"http://127.0.0.1:{free_port}")
    assert rated.returncode == 0, rated.stderr
    assert rated.stderr.count("warning") == 1 and "rating is saved" in rated.stderr
    with HistoryStore(tmp_path / "data" / "history.db") as store:
        assert store.get(1).rating == 4
