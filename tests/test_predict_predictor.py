"""The predictor on a synthetic month: calibrated, ahead of keeping the last model, quick to adopt a new one."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts" / "bench"))

import month  # noqa: E402

from mirador.predict.predictor import Predictor, Use, reliability, with_plan  # noqa: E402
from mirador.predict.usage import choose_warm  # noqa: E402


def test_a_month_hits_at_least_80_percent_with_at_most_20_percent_wasted_preloads():
    uses = month.synthetic_month()
    ours = month.simulate_predictor(uses)
    baseline = month.simulate_keep_last(uses)
    assert ours.hit_rate >= 0.80 and ours.waste <= 0.20
    assert ours.hit_rate > baseline.hit_rate


def test_probabilities_are_calibrated_on_the_held_out_tail():
    table, ece = reliability(month.synthetic_month())
    assert ece < 0.05
    confident = [b for b in table if b.low >= 0.7]
    assert confident and all(abs(b.predicted - b.observed) < 0.1 for b in confident if b.count >= 50)


def test_the_model_added_mid_month_takes_over_its_hours():
    uses = month.synthetic_month()
    predictor = Predictor.fit(uses)
    monday_ten = datetime(2026, 12, 7, 10, 15).timestamp()
    p = predictor.probabilities(monday_ten)
    assert max(p, key=p.get) == month.CODER_NEW and p[month.CODER_NEW] > 3 * p[month.CODER_OLD]
    assert month.CODER_OLD not in choose_warm(predictor.needed_this_hour(monday_ten - 1800), 0.5, 3)


def test_hours_without_habits_warm_nothing():
    predictor = Predictor.fit(month.synthetic_month())
    night = datetime(2026, 12, 8, 3, 0).timestamp()
    assert choose_warm(predictor.needed_this_hour(night), 0.7, 3) == []


def test_no_history_predicts_nothing_and_a_plan_is_certain():
    predictor = Predictor.fit([], ["a", "b"])
    assert predictor.probabilities(0.0) == {"a": 0.0, "b": 0.0}
    assert with_plan({"a": 0.2, "b": 0.1}, ["b"]) == {"a": 0.2, "b": 1.0}


def test_a_single_model_user_is_predicted_without_fitting_on_one_class():
    uses = [Use(1_700_000_000 + i * 3600, ("only:1b",)) for i in range(30)]
    assert Predictor.fit(uses).probabilities(uses[-1].at + 60)["only:1b"] > 0.7


def test_with_pattern_memory_on_recurring_topics_the_probabilities_stay_calibrated():
    # Real all-MiniLM-L6-v2 embeddings of the month's questions, as pattern memory stores them.
    uses = month.with_vectors(month.synthetic_month(recurring=True))
    assert all(u.vector is not None for u in uses)
    _, ece = reliability(uses)
    assert ece < 0.05
    ours, baseline = month.simulate_predictor(uses), month.simulate_keep_last(uses)
    assert ours.hit_rate > baseline.hit_rate and ours.waste <= 0.2


def test_similar_questions_raise_the_model_they_used_and_ratings_weigh_in():
    from mirador.predict.similar import SimilarQuestions

    def vec(*xs):
        return [*xs, 0.0, 0.0][:3]

    memory = SimilarQuestions()
    memory.add(vec(1, 0.1), ("homelab:8b",), 0.0, rating=5)
    memory.add(vec(1, 0.2), ("homelab:8b",), 100.0, rating=0)
    memory.add(vec(0, 1), ("chat:3b",), 5000.0)
    memory.add(vec(1, 0.15), ("chat:3b",), 9000.0)  # the last question: like the first two
    used, _ = memory.shares(9060.0, "homelab:8b", 0.25)
    other, _ = memory.shares(9060.0, "writer:8b", 0.25)
    assert used > 0.6 > 0.25 > other
    faded, _ = memory.shares(9000.0 + 86400, "homelab:8b", 0.25)
    assert abs(faded - 0.25) < 0.01  # a day later the last question says nothing
    disliked = SimilarQuestions()
    disliked.add(vec(1, 0.1), ("homelab:8b",), 0.0, rating=1)
    disliked.add(vec(1, 0.2), ("homelab:8b",), 100.0, rating=1)
    disliked.add(vec(1, 0.15), ("chat:3b",), 9000.0)
    assert disliked.shares(9060.0, "homelab:8b", 0.25)[0] < used


def test_predict_reads_the_questions_vectors_and_ratings_from_a_real_pattern_store(tmp_path, monkeypatch):
    from clirun import run_mirador
    from memoryhelp import save_exchanges

    from mirador.config import load_settings
    from mirador.memory.observe import memory_embedder, sync
    from mirador.predict.usage import uses_from_history, with_memory
    from mirador.predict.warm import predict

    home = tmp_path / "home"
    ids = save_exchanges(home, [("Why does my nginx container restart in a loop?", ["homelab:8b"]),
                                ("Write a haiku about autumn", ["writer:8b"])], created_at=1_700_000_000.0)
    monkeypatch.setenv("MIRADOR_HOME", str(home))
    settings = load_settings()
    uses = uses_from_history(settings.paths.history_db)
    assert sorted(u.key for u in uses) == ids and with_memory(settings, uses) == uses  # no store yet: unchanged
    sync(settings, lambda text: ("general", "en"))  # real MiniLM vectors into a real ChromaDB store
    assert run_mirador(["rate", str(ids[0]), "5"], home).returncode == 0
    remembered = with_memory(settings, uses)
    expected = memory_embedder(settings).embed(["Why does my nginx container restart in a loop?"]).vectors[0]
    assert all(u.vector is not None for u in remembered)
    nginx = next(u for u in remembered if u.key == ids[0])
    assert sum(a * b for a, b in zip(nginx.vector, expected, strict=True)) > 0.99
    assert {u.key: u.rating for u in remembered} == {ids[0]: 5, ids[1]: 0}
    assert {p.model for p in predict(settings, ["homelab:8b", "writer:8b"], at=1_700_000_100.0)} == {
        "homelab:8b", "writer:8b"}
