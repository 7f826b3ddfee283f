"""`mirador rate`: bad input, rating twice, and the first use of an empty memory."""

from __future__ import annotations

import json

from clirun import run_mirador
from memoryhelp import save_exchanges

from mirador.history import HistoryStore


def test_rating_an_id_that_does_not_exist(tmp_path):
    save_exchanges(tmp_path, [("why is the sky blue", ["llama3.2:1b"])])
    result = run_mirador(["rate", "42", "4"], tmp_path)
    assert result.returncode == 1
    assert "no exchange with id 42" in result.stderr and "Traceback" not in result.stderr


def test_a_score_out_of_range_is_bad_input_and_a_word_is_usage(tmp_path):
    save_exchanges(tmp_path, [("why is the sky blue", ["llama3.2:1b"])])
    for score in ("0", "6", "-1"):
        result = run_mirador(["rate", "1", score], tmp_path)
        assert result.returncode == 1, (score, result.stderr)
        assert "from 1 to 5" in result.stderr
    for args in (["good"], ["1", "good"], ["one", "3"], ["1", "2", "3"]):
        result = run_mirador(["rate", *args], tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
    with HistoryStore(tmp_path / "data" / "history.db") as store:
        assert store.get(1).ratings == []  # nothing was recorded by the refused ratings


def test_rating_twice_the_later_one_stands_and_history_keeps_both(tmp_path):
    save_exchanges(tmp_path, [("fix my python bug", ["llama3.2:1b", "qwen2.5-coder:7b"])])
    assert run_mirador(["rate", "5"], tmp_path).returncode == 0  # the last answer by default
    again = run_mirador(["rate", "1", "2", "--note", "changed my mind"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "rating 2 of this answer" in again.stdout
    with HistoryStore(tmp_path / "data" / "history.db") as store:
        exchange = store.get(1)
    assert [r.score for r in exchange.ratings] == [5, 2] and exchange.rating == 2
    exported = run_mirador(["memory", "export", "-"], tmp_path)
    patterns = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(patterns) == 1 and patterns[0]["rating"] == 2 and patterns[0]["note"] == "changed my mind"
    stats = json.loads(run_mirador(["memory", "stats", "--json"], tmp_path).stdout)
    assert stats["well_rated"] == 0  # the 5 was replaced
    assert {s["model"]: s["score"] for s in stats["scores"]}["qwen2.5-coder:7b"] < 0.5


def test_an_empty_memory_on_first_use(tmp_path):
    nothing = run_mirador(["rate", "3"], tmp_path)
    assert nothing.returncode == 1 and "no answer to rate yet" in nothing.stderr
    stats = run_mirador(["memory", "stats"], tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert "0 patterns" in stats.stdout and "no learned scores yet" in stats.stdout
    search = run_mirador(["memory", "search", "anything"], tmp_path)
    assert search.returncode == 0 and "no patterns yet" in search.stdout
    route = run_mirador(["route", "--fast", "--installed", "llama3.2:1b,llama3.1:8b", "why"], tmp_path)
    assert route.returncode == 0, route.stderr


def test_a_query_of_100000_characters_is_cut_for_embedding_and_says_so(tmp_path):
    long_query = "summarize these notes: " + ("the quick brown fox jumps over the lazy dog. " * 2300)
    assert len(long_query) > 100_000
    save_exchanges(tmp_path, [(long_query[:100_000], ["llama3.1:8b"]), ("why is the sky blue", ["llama3.2:1b"])])
    result = run_mirador(["rate", "1", "4"], tmp_path)
    assert result.returncode == 0, result.stderr
    patterns = {p["exchange_id"]: p for p in map(json.loads, run_mirador(["memory", "export", "-"], tmp_path)
                                                 .stdout.splitlines())}
    long_features = patterns[1]["features"]
    assert long_features["length"] == 100_000 and long_features["truncated_for_embedding"] is True
    assert long_features["document_truncated"] is True and len(patterns[1]["query"]) < 100_000
    assert patterns[2]["features"]["truncated_for_embedding"] is False
    assert patterns[2]["features"]["question_type"] == "why"
