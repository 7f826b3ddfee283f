"""`mirador energy` and `mirador history --energy` as users run them: real processes, fake power trees."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from clirun import run_mirador

from mirador.energy.accounting import EnergyMeter, account, annotate
from mirador.energy.costs import CostModel, Measurements
from mirador.history import ExchangeRecord, HistoryStore, StageRecord

SYSFS = Path(__file__).parent / "fixtures" / "energy" / "sysfs"
ON_BATTERY = str(SYSFS / "laptop-battery-15")
PLUGGED = str(SYSFS / "laptop-plugged-15")
MODELS = {
    "tiny:1b": {"text": "Short.", "parameter_size": "1.2B", "quantization_level": "Q4_K_M"},
    "mid:3b": {"text": "Longer answer.", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
    "big:8b": {"text": "The longest answer of all.", "parameter_size": "8.0B", "quantization_level": "Q4_K_M"},
}
CHAIN = "tiny:1b,mid:3b,big:8b"


def write_config(home: Path, text: str) -> None:
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "config.yaml").write_text(text)


def energy_json(home: Path, *args: str, **env: str) -> dict:
    result = run_mirador(["energy", "--json", *args], home, env.pop("host", None), **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_battery_at_15_percent_explains_survival_and_plugging_in_the_full_chain(server_factory, tmp_path):
    server = server_factory(MODELS)
    write_config(tmp_path, f"chain: [{CHAIN}]\n")
    low = run_mirador(["energy"], tmp_path, server.host, MIRADOR_SYSFS_ROOT=ON_BATTERY)
    assert low.returncode == 0, low.stderr
    assert "on battery, battery 15%, drawing 9.9 W, 0:47 left  [sysfs]" in low.stdout
    assert "profile  survival: on battery at 15%, below 20% (auto)" in low.stdout
    assert "models of at most 2B parameters, 1 stage, at most 200 tokens a stage" in low.stdout
    assert "  * survival     tiny:1b " in low.stdout
    assert "\x1b" not in low.stdout  # a pipe gets plain text
    plugged = run_mirador(["energy"], tmp_path, server.host, MIRADOR_SYSFS_ROOT=PLUGGED)
    assert plugged.returncode == 0, plugged.stderr
    assert "plugged in, battery 15%" in plugged.stdout
    assert "profile  performance: plugged in (auto)" in plugged.stdout
    assert "  * performance  tiny:1b → mid:3b → big:8b" in plugged.stdout


def test_energy_json_names_where_every_number_came_from(server_factory, tmp_path):
    server = server_factory(MODELS)
    data = energy_json(tmp_path, host=server.host, MIRADOR_SYSFS_ROOT=ON_BATTERY)
    assert data["power"]["battery_percent"] == 15 and data["power"]["plugged"] is False
    assert data["profile"]["name"] == "survival"
    models = {m["model"]: m for m in data["models"]}
    assert set(models) == set(MODELS)
    big = models["big:8b"]
    assert big["params_b"] == 8.0 and big["quantization"] == "Q4_K_M" and big["source"] == "default"
    assert big["joules_per_token"] == 1.08 and big["tokens_per_s_source"] == "default"
    plans = {p["profile"]: p for p in data["plans"]}
    assert plans["survival"]["models"] == ["tiny:1b"]
    assert plans["performance"]["models"] == ["tiny:1b", "mid:3b", "big:8b"]
    assert plans["balanced"]["joules"] <= plans["balanced"]["budget_joules"]


def test_measured_tokens_per_second_from_history_show_as_measured(server_factory, tmp_path):
    server = server_factory(MODELS)
    with HistoryStore(tmp_path / "data" / "history.db") as store:
        for _ in range(3):
            store.save_exchange(ExchangeRecord("q", "complete", [
                StageRecord(0, "big:8b", "answer", 0.8, "x", eval_count=200, eval_ms=8000.0, tokens_per_s=25.0)]))
    data = energy_json(tmp_path, host=server.host, MIRADOR_POWER="plugged")
    big = {m["model"]: m for m in data["models"]}["big:8b"]
    assert big["source"] == "measured tokens/s" and big["tokens_per_s"] == 25.0
    assert big["tokens_per_s_source"] == "measured (3 answers)" and big["joules_per_token"] == 0.8
    cache = json.loads((tmp_path / "data" / "energy.json").read_text())
    assert cache["rates"]["big:8b"]["samples"] == 3 and cache["facts"]["big:8b"]["params_b"] == 8.0


def test_bad_mirador_power_is_a_clear_error(tmp_path):
    result = run_mirador(["energy"], tmp_path, MIRADOR_POWER="battery:150")
    assert result.returncode == 1
    assert "mirador: MIRADOR_POWER='battery:150' is not a power state" in result.stderr
    assert "hint: use MIRADOR_POWER=plugged or MIRADOR_POWER=battery:15" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_installed_model_fits_survival_falls_back_to_the_smallest(server_factory, tmp_path):
    server = server_factory({"big:8b": MODELS["big:8b"], "huge:14b": {"parameter_size": "14.8B"}})
    result = run_mirador(["energy"], tmp_path, server.host, MIRADOR_POWER="battery:10")
    assert result.returncode == 0, result.stderr
    assert "no installed model fits the survival profile (models of at most 2B parameters); " \
           "falling back to the smallest installed model, big:8b (8B)" in result.stdout


def test_profile_override_and_setting(server_factory, tmp_path):
    server = server_factory(MODELS)
    forced = energy_json(tmp_path, "--profile", "balanced", host=server.host, MIRADOR_SYSFS_ROOT=PLUGGED)
    assert forced["profile"]["name"] == "balanced" and forced["profile"]["chosen_by"] == "--profile"
    set_it = run_mirador(["energy", "profile", "survival"], tmp_path, MIRADOR_SYSFS_ROOT=PLUGGED)
    assert set_it.returncode == 0, set_it.stderr
    assert "energy profile setting: survival" in set_it.stdout and "in force now: survival" in set_it.stdout
    assert "energy_profile: survival" in (tmp_path / "config" / "config.yaml").read_text()
    assert energy_json(tmp_path, host=server.host, MIRADOR_SYSFS_ROOT=PLUGGED)["profile"]["name"] == "survival"
    back = run_mirador(["energy", "profile", "auto"], tmp_path, MIRADOR_SYSFS_ROOT=PLUGGED)
    assert "in force now: performance: plugged in" in back.stdout
    bad = run_mirador(["energy", "profile", "turbo"], tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'turbo'" in bad.stderr


def test_threshold_from_config(tmp_path):
    write_config(tmp_path, "energy_survival_below: 10\n")
    data = energy_json(tmp_path, MIRADOR_SYSFS_ROOT=ON_BATTERY)
    assert data["profile"]["name"] == "balanced"  # 15% is above a 10% threshold
    write_config(tmp_path, "energy_survival_below: 120\n")
    result = run_mirador(["energy"], tmp_path)
    assert result.returncode == 1 and "energy_survival_below" in result.stderr and "0 to 100" in result.stderr


def test_unreachable_server_still_explains_the_profile(tmp_path, free_port):
    result = run_mirador(["energy"], tmp_path, f"127.0.0.1:{free_port}", MIRADOR_POWER="battery:50")
    assert result.returncode == 0, result.stderr
    assert "profile  balanced: on battery at 50%" in result.stdout
    assert "installed models unknown: cannot reach the model server" in result.stdout


def test_calibrate_stores_speed_and_load_time(server_factory, tmp_path):
    server = server_factory({"tiny:1b": {**MODELS["tiny:1b"], "num_tokens": 64, "rate": 400, "load_time": 0.2},
                             "all-minilm:latest": {"parameter_size": "23M", "embedding_dim": 8}})
    result = run_mirador(["energy", "calibrate"], tmp_path, server.host, MIRADOR_SYSFS_ROOT=PLUGGED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("tiny:1b: ") and "tok/s" in result.stdout
    assert "no power sensor readable" in result.stdout
    assert "all-minilm" not in result.stdout  # an embedding model does not chat
    stored = json.loads((tmp_path / "data" / "energy.json").read_text())["calibration"]["tiny:1b"]
    assert 200 < stored["tokens_per_s"] < 800 and stored["load_ms"] > 150
    assert stored["joules_per_token"] is None
    data = energy_json(tmp_path, host=server.host, MIRADOR_POWER="plugged")
    tiny = {m["model"]: m for m in data["models"]}["tiny:1b"]
    assert tiny["tokens_per_s_source"] == "measured (calibrate)" and tiny["source"] == "measured tokens/s"
    missing = run_mirador(["energy", "calibrate", "-m", "nope:1b"], tmp_path, server.host)
    assert missing.returncode == 1 and "'nope:1b' is not installed" in missing.stderr


# -- accounting and `mirador history --energy` ---------------------------------------------------------


def record(model: str, eval_count: int, eval_ms: float | None, created_at: float = 0.0) -> ExchangeRecord:
    stage = StageRecord(0, model, "answer", 0.8, "some answer text", eval_count=eval_count, eval_ms=eval_ms,
                        prompt_eval_count=100, total_ms=(eval_ms or 0) + 50,
                        tokens_per_s=eval_count / eval_ms * 1000 if eval_ms else None)
    return ExchangeRecord("question", "complete", [stage], created_at=created_at)


def test_estimates_use_the_stage_own_speed_or_the_model_cost():
    costs = CostModel(measurements=Measurements(facts={"big:8b": {"params_b": 8.0, "quantization": "Q4_K_M"}}))
    timed = record("big:8b", 100, 4000.0)
    untimed = record("big:8b", 100, None)
    annotate(timed, costs, measured=(50.0, "RAPL"))
    annotate(untimed, costs)
    # 20 W for 4 s of decoding, plus 100 prompt tokens at a tenth of 1.08 J.
    assert timed.stages[0].energy_j == 80.0 + 10.8 and timed.stages[0].energy_basis == "measured tokens/s"
    assert timed.stages[0].measured_energy_j == 50.0 and timed.stages[0].measured_by == "RAPL"
    assert untimed.stages[0].energy_j == 108.0 + 10.8 and untimed.stages[0].energy_basis == "default"
    assert untimed.stages[0].measured_energy_j is None


def test_meter_with_a_frozen_rapl_counter_measures_nothing():
    meter = EnergyMeter.start(SYSFS / "desktop-rapl")
    assert meter.rapl is not None and meter.stop() is None


def test_history_energy_totals_by_model_and_day(tmp_path):
    settings = type("S", (), {"paths": type("P", (), {"data_dir": tmp_path / "data"})(), "energy_active_watts": 20.0})
    day = 1_700_000_000.0  # 2023-11-14
    with HistoryStore(tmp_path / "data" / "history.db") as store:
        for model, when in (("big:8b", day), ("big:8b", day + 86400), ("tiny:1b", day + 86400)):
            exchange = record(model, 100, 2000.0, when)
            account(exchange, settings)
            store.save_exchange(exchange)
        store.save_exchange(ExchangeRecord("old", "complete", [StageRecord(0, "tiny:1b", "answer", 0.5, "x")],
                                           created_at=day))  # no estimate: written before the accounting
    result = run_mirador(["history", "--energy", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    by_model = {r["key"]: r for r in rows if r["by"] == "model"}
    assert by_model["big:8b"]["answers"] == 2 and by_model["big:8b"]["energy_j"] > 0
    assert by_model["tiny:1b"]["stages"] == 2 and by_model["tiny:1b"]["estimated_stages"] == 1
    days = [r for r in rows if r["by"] == "day"]
    assert len(days) == 2 and days[0]["key"] > days[1]["key"]  # newest day first
    plain = run_mirador(["history", "--energy"], tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert "energy by model" in plain.stdout and "energy by day" in plain.stdout
    assert "none for 1 of 2 stages" in plain.stdout
    shown = run_mirador(["history", "show", "1"], tmp_path)
    assert "~50.8 J (measured tokens/s)" in shown.stdout  # 20 W for 2 s of decoding + 100 prompt tokens
    assert json.loads((tmp_path / "data" / "energy.json").read_text())["rates"]["big:8b"]["samples"] == 2


def test_history_energy_with_no_history(tmp_path):
    result = run_mirador(["history", "--energy"], tmp_path)
    assert result.returncode == 0 and "No history yet" in result.stdout


def test_a_version_1_history_gains_the_energy_columns(tmp_path):
    db_path = tmp_path / "history.db"
    conn = sqlite3.connect(db_path)
    from mirador.history import _SCHEMA_V1

    for statement in _SCHEMA_V1:
        conn.execute(statement)
    conn.execute("INSERT INTO conversations VALUES (1, 0, 't')")
    conn.execute("INSERT INTO exchanges (id, conversation_id, created_at, prompt, status)"
                 " VALUES (1, 1, 0, 'p', 'complete')")
    conn.execute("INSERT INTO stages (exchange_id, idx, model, purpose, eval_count) VALUES (1, 0, 'm:1b', 'answer', 9)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with HistoryStore(db_path) as store:
        old = store.get(1)
        assert old.stages[0].energy_j is None and old.stages[0].eval_count == 9
        [total] = store.energy_totals("model")
        assert total.key == "m:1b" and total.estimated_stages == 0
