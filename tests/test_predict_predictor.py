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
