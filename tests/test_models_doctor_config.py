"""`mirador models | preload | unload | doctor | config` against a real scripted server."""

from __future__ import annotations

import json
import stat

from clirun import run_mirador

MODELS = {
    "fast:1b": {"text": "Quick answer.", "load_time": 0.05, "parameter_size": "1.2B"},
    "big:8b": {"text": "Considered final answer.", "load_time": 0.05},
}


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_models_lists_installed_and_loaded(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["models", "--json"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in lines(result.stdout)}
    assert set(rows) == {"fast:1b", "big:8b"} and not any(r["loaded"] for r in rows.values())

    assert run_mirador(["preload", "fast:1b", "--keep-alive", "-1"], tmp_path, server.host).returncode == 0
    rows = {r["name"]: r for r in lines(run_mirador(["models", "--json"], tmp_path, server.host).stdout)}
    assert rows["fast:1b"]["loaded"] and rows["fast:1b"]["expires_at"] and not rows["big:8b"]["loaded"]

    table = run_mirador(["models"], tmp_path, server.host)
    assert "fast:1b" in table.stdout and "never (pinned)" in table.stdout and "\x1b" not in table.stdout


def test_preload_pin_is_kept_by_later_questions(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["preload", "fast:1b", "--keep-alive", "-1"], tmp_path, server.host)
    assert result.returncode == 0 and "kept until unloaded" in result.stdout
    assert stat.S_IMODE((tmp_path / "data" / "pins.json").stat().st_mode) == 0o600
    run_mirador(["ask", "-m", "fast:1b", "hi"], tmp_path, server.host)
    run_mirador(["ask", "-m", "big:8b", "hi"], tmp_path, server.host)
    bodies = [r["body"] for r in server.requests() if r["path"] == "/api/chat"]
    # A later question must not shorten the user's -1 back to the default.
    assert [b["keep_alive"] for b in bodies] == [-1, "10m"]

    result = run_mirador(["unload", "fast:1b", "--json"], tmp_path, server.host)
    assert result.returncode == 0
    assert lines(result.stdout) == [{"model": "fast:1b", "ok": True, "done_reason": "unload"}]
    run_mirador(["ask", "-m", "fast:1b", "hi"], tmp_path, server.host)
    assert [r["body"] for r in server.requests() if r["path"] == "/api/chat"][-1]["keep_alive"] == "10m"


def test_preload_of_a_missing_model_fails_alone(server_factory, tmp_path):
    server = server_factory(MODELS)
    result = run_mirador(["preload", "fast:1b", "ghost:1b"], tmp_path, server.host)
    assert result.returncode == 1
    assert "fast:1b: loaded" in result.stdout
    assert "ghost:1b" in result.stderr and "ollama pull ghost:1b" in result.stderr


def test_doctor_reports_each_check(server_factory, tmp_path):
    server = server_factory(MODELS)
    run_mirador(["config", "set", "chain", "fast:1b,big:8b"], tmp_path)
    result = run_mirador(["doctor", "--json"], tmp_path, server.host)
    assert result.returncode == 0, result.stdout
    checks = {c["name"]: c for c in lines(result.stdout)}
    assert set(checks) == {"config", "data dir", "server", "models", "battery sensor"}
    assert all(c["ok"] for c in checks.values())

    run_mirador(["config", "set", "chain", "fast:1b,huge:70b"], tmp_path)
    result = run_mirador(["doctor"], tmp_path, server.host)
    assert result.returncode == 1 and "ollama pull huge:70b" in result.stdout


def test_doctor_without_a_server(tmp_path, free_port):
    result = run_mirador(["doctor"], tmp_path, f"127.0.0.1:{free_port}")
    assert result.returncode == 3
    assert "[FAIL] server" in result.stdout and "mirador serve" in result.stdout


def test_config_set_validates_and_show_reports_sources(tmp_path):
    assert run_mirador(["config", "set", "keep_alive", "30m"], tmp_path).returncode == 0
    bad = run_mirador(["config", "set", "keep_alive", "soon"], tmp_path)
    assert bad.returncode == 1 and "keep_alive" in bad.stderr
    unknown = run_mirador(["config", "set", "colour", "red"], tmp_path)
    assert unknown.returncode == 1 and "known settings" in unknown.stderr
    shown = json.loads(run_mirador(["config", "show", "--json"], tmp_path, "example.org:1234").stdout)
    assert shown["keep_alive"] == {"value": "30m", "source": str(tmp_path / "config" / "config.yaml")}
    assert shown["host"] == {"value": "http://example.org:1234", "source": "$OLLAMA_HOST"}
    config_file = tmp_path / "config" / "config.yaml"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert str(config_file) in run_mirador(["config", "path"], tmp_path).stdout


def test_cli_usage_errors(tmp_path):
    assert run_mirador([], tmp_path).returncode == 2
    unknown = run_mirador(["aks"], tmp_path)
    assert unknown.returncode == 2 and "did you mean `mirador ask`" in unknown.stderr
    assert run_mirador(["--version"], tmp_path).stdout.startswith("mirador ")
    assert "ask" in run_mirador(["--help"], tmp_path).stdout
