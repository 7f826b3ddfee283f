"""The energy profile inside `mirador route` and `mirador ask`: the planner's choice under the power state."""

from __future__ import annotations

import json
import time
from pathlib import Path

from clirun import run_mirador, stage_rows

SYSFS = Path(__file__).parent / "fixtures" / "energy" / "sysfs"
ON_BATTERY = str(SYSFS / "laptop-battery-15")
PLUGGED = str(SYSFS / "laptop-plugged-15")
MODELS = {
    "llama3.2:1b": {"text": "Refinance if fees are low.", "parameter_size": "1.2B", "quantization_level": "Q8_0"},
    "llama3.2:3b": {"text": "It depends on the fees.", "parameter_size": "3.2B", "quantization_level": "Q4_K_M"},
    "qwen2.5:7b": {"text": "Compare the total interest.", "parameter_size": "7.6B", "quantization_level": "Q4_K_M"},
    "qwen2.5:14b": {"text": "A two-point drop usually pays.", "parameter_size": "14.8B",
                    "quantization_level": "Q4_K_M"},
}
QUESTION = "should I refinance my car loan if the new rate is two points lower"


def route(home: Path, host: str, *args: str, **env: str) -> dict:
    result = run_mirador(["route", "--json", "--fast", *args, QUESTION], home, host, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_route_explain_shows_a_survival_plan_on_battery_and_the_full_chain_plugged_in(server_factory, tmp_path):
    server = server_factory(MODELS)
    low = run_mirador(["route", "--explain", "--fast", QUESTION], tmp_path, server.host, MIRADOR_SYSFS_ROOT=ON_BATTERY)
    assert low.returncode == 0, low.stderr
    assert "chain (1 stage," in low.stdout and "llama3.2:1b" in low.stdout
    assert "energy: survival profile (on battery at 15%, below 20%): 1 stage" in low.stdout
    assert "synthesis: wanted qwen2.5:14b → step dropped: left out by the survival profile" in low.stdout
    plugged = run_mirador(["route", "--explain", "--fast", QUESTION], tmp_path, server.host,
                          MIRADOR_SYSFS_ROOT=PLUGGED)
    assert plugged.returncode == 0, plugged.stderr
    assert "chain (3 stages," in plugged.stdout
    assert "energy: performance profile (plugged in): the full chain" in plugged.stdout


def test_route_json_carries_the_energy_plan(server_factory, tmp_path):
    server = server_factory(MODELS)
    low = route(tmp_path, server.host, MIRADOR_SYSFS_ROOT=ON_BATTERY)
    assert [stage["model"] for stage in low["chain"]] == ["llama3.2:1b"]
    assert low["chain"][0]["purpose"] == "answer"
    assert low["energy"]["profile"] == "survival" and low["energy"]["max_tokens"] == 200
    assert low["energy"]["joules"] < low["energy"]["full_power_joules"] / 10
    full = route(tmp_path, server.host, MIRADOR_SYSFS_ROOT=PLUGGED)
    assert [stage["model"] for stage in full["chain"]] == ["llama3.2:1b", "qwen2.5:7b", "qwen2.5:14b"]
    assert full["energy"] is None
    balanced = route(tmp_path, server.host, "--profile", "balanced", MIRADOR_SYSFS_ROOT=PLUGGED)
    assert balanced["energy"]["profile"] == "balanced"
    assert balanced["energy"]["joules"] <= balanced["energy"]["budget_joules"]
    assert len({s["model"] for s in balanced["chain"]}) == len(balanced["chain"])  # one step per model


def test_survival_falls_back_to_the_smallest_installed_model(tmp_path):
    result = run_mirador(["route", "--explain", "--fast", "--installed", "qwen2.5:7b,qwen2.5:14b", QUESTION],
                         tmp_path, MIRADOR_POWER="battery:5")
    assert result.returncode == 0, result.stderr
    assert "falling back to the smallest installed model, qwen2.5:7b (7.62B)" in result.stdout


def test_route_with_a_bad_power_override(tmp_path):
    result = run_mirador(["route", "--fast", "--installed", "llama3.2:1b", QUESTION], tmp_path,
                         MIRADOR_POWER="half")
    assert result.returncode == 1 and "MIRADOR_POWER='half' is not a power state" in result.stderr


def test_ask_on_battery_answers_in_one_short_micro_stage_and_logs_its_energy(server_factory, tmp_path):
    server = server_factory(MODELS)
    started = time.monotonic()
    result = run_mirador(["ask", QUESTION], tmp_path, server.host, MIRADOR_SYSFS_ROOT=ON_BATTERY)
    wall = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    bodies = server.chat_bodies()
    assert [(b["model"], b["options"]["num_predict"]) for b in bodies] == [("llama3.2:1b", 200)], result.stderr
    [row] = stage_rows(tmp_path)
    assert row["model"] == "llama3.2:1b" and row["energy_j"] > 0, dict(row)
    assert row["energy_basis"] in ("measured tokens/s", "default"), dict(row)
    # No RAPL in the fake tree: the battery's 9.876 W draw over the answer's seconds is the measurement.
    assert row["measured_by"] == "battery" and 0 < row["measured_energy_j"] <= 9.876 * wall, dict(row)


def test_ask_profile_flag_overrides_the_power_state(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "--profile", "performance", QUESTION], tmp_path, server.host,
                         MIRADOR_SYSFS_ROOT=ON_BATTERY)
    assert result.returncode == 0, result.stderr
    assert [b["model"] for b in server.chat_bodies()] == ["llama3.2:1b", "qwen2.5:7b", "qwen2.5:14b"]
    assert all(row["energy_j"] is not None for row in stage_rows(tmp_path))
    totals = run_mirador(["history", "--energy", "--json"], tmp_path)
    by_model = {r["key"]: r for r in map(json.loads, totals.stdout.splitlines()) if r["by"] == "model"}
    assert set(by_model) == {"llama3.2:1b", "qwen2.5:7b", "qwen2.5:14b"}


def test_ask_profile_with_a_chosen_model_is_a_usage_error(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["ask", "-m", "llama3.2:1b", "--profile", "survival", "hi"], tmp_path, server.host)
    assert result.returncode == 2 and "--profile guides the planner's choice" in result.stderr
    assert server.chat_bodies() == []
