"""Deep-track deployment: where the base GGUF comes from, the adapter and fused paths to a real `mirador serve`,
the atomic switch, `mirador train deploy ID | --schedule`, and the planner's `personalized` setting.

One fused merge of SmolLM2-135M (~115 MB) per session: the module-scoped `fused` fixture deploys a random
LoRA through a server that refuses adapters, and the other tests reuse what it left on that server.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from clirun import run_mirador
from ggufwriter import write_gguf, write_smollm2_lora
from llamaproc import smollm2_gguf, start_llama_server

pytest.importorskip("gguf", reason="the fused path needs gguf: pip install 'mirador[train-torch]'")

BASE, DEPLOYED = "smollm2:135m", "smollm2:135m-mirador"
PROMPTS = ["What is the capital of France?", "Tell me about rivers."]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def list_adapter(home: Path, stamp: str, adapter: Path, base: str = BASE) -> Path:
    """What a validated `mirador train` run leaves: adapters/<stamp>/{adapter.gguf, metrics.json}."""
    folder = home / "data" / "learn" / "adapters" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "adapter.gguf"
    shutil.copyfile(adapter, target)
    (folder / "metrics.json").write_text(json.dumps({"outcome": "validated", "stamp": stamp, "base": base,
                                                      "adapter": str(target)}), encoding="utf-8")
    return target


def show(url: str, model: str) -> dict:
    response = httpx.post(f"{url}/api/show", json={"model": model}, timeout=30)
    response.raise_for_status()
    return response.json()


def from_path(url: str, model: str) -> Path:
    line = next(line for line in show(url, model)["modelfile"].splitlines() if line.startswith("FROM "))
    return Path(line[5:])


def tags(url: str) -> dict[str, str]:
    return {m["name"]: m["digest"] for m in httpx.get(f"{url}/api/tags", timeout=30).json()["models"]}


def greedy(url: str, model: str, prompt: str) -> str:
    answer = httpx.post(f"{url}/api/chat", timeout=120, json={
        "model": model, "stream": False, "options": {"temperature": 0, "num_predict": 24},
        "messages": [{"role": "user", "content": prompt}]})
    answer.raise_for_status()
    return answer.json()["message"]["content"]


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """A server refusing adapters (B) with run1 deployed by `mirador train deploy run1` (auto → fused)."""
    root = tmp_path_factory.mktemp("deploy")
    home = root / "home-b"
    lora = write_smollm2_lora(root / "lora.gguf", seed=3, scale=0.1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MIRADOR_SERVE_REFUSE_ADAPTERS", "1")
        server = start_llama_server(root / "b", home=home)
    try:
        adapter = list_adapter(home, "run1", lora)
        result = run_mirador(["train", "deploy", "run1", "--json"], home, server.url, timeout=300,
                             OLLAMA_MODELS=str(root / "no-ollama"))
        yield {"root": root, "home": home, "server": server, "lora": lora, "adapter": adapter, "result": result}
    finally:
        server.stop()


def test_a_runtime_that_refuses_adapters_gets_the_fused_model_and_says_so(fused):
    result, url = fused["result"], fused["server"].url
    assert result.returncode == 0, result.stderr
    deployed = json.loads(result.stdout)
    assert deployed["path"] == "fused" and deployed["model"] == DEPLOYED
    assert "MIRADOR_SERVE_REFUSE_ADAPTERS" in deployed["refusal"]
    blob = from_path(url, DEPLOYED)
    assert blob.name == f"sha256-{sha256(blob)}" and blob.stat().st_size > smollm2_gguf().stat().st_size
    about = show(url, DEPLOYED)
    assert "ADAPTER" not in about["modelfile"]
    assert about["system"] == show(url, BASE)["system"]  # the base's system prompt and sampling carried over
    assert "temperature" in about["parameters"]
    assert not any(name.endswith("-next") for name in tags(url))  # the staging model is gone
    state = json.loads((fused["home"] / "data" / "learn" / "state.json").read_text())
    assert state["current"]["path"] == "fused" and state["current"]["stamp"] == "run1"
    assert not (fused["adapter"].parent / "fused.gguf").exists()  # the runtime keeps the merged file, not us


def chat_text(prompt: str) -> str:
    """What `mirador serve` renders for SmolLM2 with the base's system prompt (the GGUF's chat template)."""
    return (f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
            "<|im_start|>assistant\n")


def test_the_fused_model_answers_like_base_plus_adapter(fused, tmp_path):
    import numpy as np
    from llama_cpp import Llama

    from mirador.learn.deploy import base_settings, upload_blob

    blob = from_path(fused["server"].url, DEPLOYED)
    server = start_llama_server(tmp_path / "a")
    try:
        result = run_mirador(["train", "deploy", "run1"], list_home(tmp_path, fused["lora"]), server.url,
                             timeout=300)
        assert result.returncode == 0, result.stderr
        assert "as an adapter on its base" in result.stdout
        digest = upload_blob(server.url, blob)
        created = httpx.post(f"{server.url}/api/create", timeout=120, json={
            "model": "fused-check:latest", "files": {"fused.gguf": digest}, "stream": False,
            **base_settings(server.url, BASE)})
        assert created.status_code == 200, created.text
        # Served side by side, the merged model and base + adapter give the same greedy answer (a prompt whose
        # every next token leads by a clear margin: exact equality on near-ties would test rounding, not merging).
        fused_answer = greedy(server.url, "fused-check:latest", PROMPTS[0])
        assert fused_answer == greedy(server.url, DEPLOYED, PROMPTS[0]) and "Paris" in fused_answer
    finally:
        server.stop()

    def model(path: Path, lora: Path | None = None) -> Llama:
        extra = {"lora_path": str(lora)} if lora else {}
        return Llama(model_path=str(path), n_ctx=256, verbose=False, logits_all=True, n_threads=2, **extra)

    with_adapter, merged, base = model(smollm2_gguf(), fused["lora"]), model(blob), model(smollm2_gguf())
    for prompt in PROMPTS:
        # Teacher-forced along base + adapter's greedy answer: the next-token logits at every step.
        ids = with_adapter.tokenize(chat_text(prompt).encode(), add_bos=False, special=True)
        models = (with_adapter, merged, base)
        for llm in models:
            llm.reset()
            llm.eval(ids)
        error = effect = 0.0
        for _ in range(12):
            a, m, b = (np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64) for llm in models)
            top2 = np.sort(a)[-2:]
            if top2[1] - top2[0] > 0.5:  # a clear choice: the merged model makes it too
                assert int(m.argmax()) == int(a.argmax()), prompt
            error += float(np.linalg.norm(a - m))
            effect += float(np.linalg.norm(a - b))
            for llm in models:  # all three continue along base + adapter's choice (the KV cache grows by one)
                llm.eval([int(a.argmax())])
        # What remains (llama.cpp quantizes activations on the Q4_1 path, not on F16) is a small part of
        # what the adapter changed; a merge that did nothing would leave all of it.
        assert error < 0.3 * effect, (prompt, error, effect)


def list_home(tmp_path: Path, lora: Path) -> Path:
    home = tmp_path / "a" / "home"
    list_adapter(home, "run1", lora)
    return home


def test_a_failed_deploy_leaves_the_model_and_state_untouched_then_rollback_restores(fused):
    home, url = fused["home"], fused["server"].url
    state_file = home / "data" / "learn" / "state.json"
    before_state, before_tags = state_file.read_bytes(), tags(url)
    second = list_adapter(home, "run2", write_smollm2_lora(fused["root"] / "lora2.gguf", seed=4, scale=0.05))
    (second.parent / "fused.gguf").mkdir()  # the merged file cannot be written there
    failed = run_mirador(["train", "deploy", "run2"], home, url, timeout=300)
    assert failed.returncode == 1, failed.stderr
    assert "cannot write the fused model" in failed.stderr and "adapter path was refused" in failed.stderr
    assert "Traceback" not in failed.stderr
    refused = run_mirador(["train", "deploy", "run2", "--deploy-as", "adapter"], home, url, timeout=120)
    assert refused.returncode == 3 and "does not create models with adapters" in refused.stderr
    assert state_file.read_bytes() == before_state and tags(url) == before_tags

    (second.parent / "fused.gguf").rmdir()
    assert run_mirador(["train", "deploy", "run2"], home, url, timeout=300).returncode == 0
    run1_blob = Path(json.loads(state_file.read_text())["previous"]["fused_digest"].replace(":", "-"))
    assert from_path(url, DEPLOYED).name != run1_blob.name
    back = run_mirador(["train", "rollback"], home, url, timeout=300)
    assert back.returncode == 0, back.stderr
    assert from_path(url, DEPLOYED).name == run1_blob.name  # the merged file of run1, reused
    state = json.loads(state_file.read_text())
    assert state["current"]["stamp"] == "run1" and state["previous"]["stamp"] == "run2"


def test_deploy_of_an_unknown_id_says_which_exist(tmp_path):
    home = tmp_path / "home"
    list_adapter(home, "20260101-000000", write_smollm2_lora(tmp_path / "l.gguf", layers=1))
    result = run_mirador(["train", "deploy", "nope"], home, "http://127.0.0.1:9")
    assert result.returncode == 1 and "no adapter 'nope'" in result.stderr and "20260101-000000" in result.stderr


# -- where the base weights come from --------------------------------------------------------------

def fake_ollama(root: Path, name: str, tag: str) -> tuple[Path, str]:
    """An Ollama models folder as `ollama pull` leaves it: a blob and a manifest naming it."""
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    gguf = write_gguf(root / "model.tmp", {"general.architecture": "llama", "llama.context_length": 2048},
                      {"token_embd.weight": np.ones((4, 8))})
    digest = sha256(gguf)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    blob = root / "blobs" / f"sha256-{digest}"
    gguf.rename(blob)
    template = root / "blobs" / ("sha256-" + "1" * 64)
    template.write_text("{{ .Prompt }}")
    namespace, model = name.split("/") if "/" in name else ("library", name)
    manifest = root / "manifests" / "registry.ollama.ai" / namespace / model / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + "2" * 64, "size": 485},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}",
                    "size": blob.stat().st_size},
                   {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64,
                    "size": 13}]}))
    return blob, digest


def test_the_base_is_found_in_ollamas_models_folder_without_a_server(tmp_path, monkeypatch):
    from mirador.learn.base_model import locate

    monkeypatch.setenv("MIRADOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    blob, digest = fake_ollama(tmp_path / "models", "llama3.2", "1b")
    found = locate("llama3.2:1b", "http://127.0.0.1:9")  # nothing listens there
    assert (found.path, found.digest, found.source) == (blob, digest, "ollama")


def test_a_namespaced_model_is_found_by_its_manifest_path(tmp_path, monkeypatch):
    from mirador.learn.base_model import locate

    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "models"))
    blob, digest = fake_ollama(tmp_path / "models", "someone/tuned", "latest")
    found = locate("someone/tuned", None)
    assert (found.path, found.digest) == (blob, digest)


def test_the_base_is_found_through_a_real_mirador_serve(tmp_path, monkeypatch):
    from mirador.learn.base_model import locate

    home = tmp_path / "home"
    monkeypatch.setenv("MIRADOR_HOME", str(home))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty"))
    server = start_llama_server(tmp_path, home=home)
    try:
        tags(server.url)  # the server learns (and caches) the file's digest when it lists it
        found = locate(BASE, server.url)
    finally:
        server.stop()
    assert found.source == "runtime" and found.path == smollm2_gguf().resolve()
    assert found.digest == sha256(smollm2_gguf())  # from the store's cache: not hashed again


def test_a_base_that_is_not_installed_is_a_clear_error(tmp_path):
    from mirador.history import ExchangeRecord, HistoryStore, StageRecord

    home = tmp_path / "home"
    with HistoryStore(home / "data" / "history.db") as store:
        for topic in ("rain", "snow"):
            exchange_id, _ = store.save_exchange(ExchangeRecord(
                prompt=f"Tell me about {topic}.", status="complete",
                stages=[StageRecord(0, BASE, "answer", 1.0, text=f"{topic} is weather.")]))
            store.add_rating(exchange_id, 5)
    server = start_llama_server(tmp_path, home=home)
    try:
        result = run_mirador(["train", "--base", "nosuch:1b", "--min-examples", "1"], home, server.url,
                             OLLAMA_MODELS=str(tmp_path / "models"))
    finally:
        server.stop()
    assert result.returncode == 1, result.stderr
    assert "base model nosuch:1b is not installed" in result.stderr
    assert str(tmp_path / "models") in result.stderr and "ollama pull nosuch:1b" in result.stderr
    assert "Traceback" not in result.stderr


# -- personalised routing ---------------------------------------------------------------------------

def route(home: Path, url: str, *extra: str) -> dict:
    result = run_mirador(["route", "--fast", "--json", *extra, "What is the capital of France?"], home, url)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_personalized_routes_to_the_mirador_twin_of_the_chosen_base(tmp_path):
    home = tmp_path / "home"
    server = start_llama_server(tmp_path, home=home)
    try:
        plain = route(home, server.url)
        assert [s["model"] for s in plain["chain"]] == [BASE]
        created = httpx.post(f"{server.url}/api/create", timeout=60,
                             json={"model": DEPLOYED, "from": BASE, "stream": False})
        assert created.status_code == 200, created.text
        off = route(home, server.url)
        assert [s["model"] for s in off["chain"]] == [BASE]  # installed, but personalized is off by default
        assert run_mirador(["config", "set", "personalized", "true"], home).returncode == 0
        on = route(home, server.url)
        assert [s["model"] for s in on["chain"]] == [DEPLOYED]
        explained = run_mirador(["route", "--fast", "--explain", "What is the capital of France?"], home,
                                server.url)
        assert f"{DEPLOYED} answers in place of {BASE} (personalized: true" in explained.stdout
    finally:
        server.stop()


def test_the_twin_is_never_a_candidate_of_its_own_while_its_base_is_installed():
    from mirador.routing.classify import classify_fast
    from mirador.routing.installed import installed_models
    from mirador.routing.matrix import load_matrix
    from mirador.routing.planner import NoModelFits, PlanConstraints, plan

    matrix = load_matrix()
    query = classify_fast("What is the capital of France?", matrix)
    listed = installed_models(matrix, [{"name": DEPLOYED}, {"name": BASE}])  # the twin listed first
    assert [c.model for c in plan(query, matrix, listed).choices] == [BASE]
    chosen = plan(query, matrix, listed, PlanConstraints(personalized=True))
    assert [c.model for c in chosen.choices] == [DEPLOYED]
    # A refined plan that reserved the twin for stage 1 does not give its base to a later stage.
    with pytest.raises(NoModelFits):
        plan(query, matrix, listed, PlanConstraints(personalized=True, reserved=frozenset({DEPLOYED})))
    alone = installed_models(matrix, [{"name": DEPLOYED}])  # without its base it is a model like any other
    assert [c.model for c in plan(query, matrix, alone).choices] == [DEPLOYED]
    # The candidate a killed deploy left behind never answers, personalised or not.
    staging = installed_models(matrix, [{"name": DEPLOYED + "-next"}, {"name": BASE}])
    assert [c.model for c in plan(query, matrix, staging).choices] == [BASE]
    assert [c.model for c in plan(query, matrix, staging, PlanConstraints(personalized=True)).choices] == [BASE]


# -- the schedule -----------------------------------------------------------------------------------

def test_schedule_prints_a_crontab_line_that_runs(tmp_path):
    home = tmp_path / "home"
    result = run_mirador(["train", "--schedule"], home)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line and not line.startswith("#"))
    fields = line.split(None, 5)
    assert fields[:5] == ["17", "3", "*", "*", "*"]
    command = fields[5]
    assert f"MIRADOR_HOME={home}" in command and "train --quiet" in command
    log = home / "data" / "learn" / "logs" / "cron.log"
    assert command.endswith(f">> {log} 2>&1")
    executable = command.split()[1]
    assert Path(executable).is_absolute() and Path(executable).is_file()
    assert not log.exists()  # printed, not installed, not run
    # What cron would run: with no rated history it is a quiet no-op that logs to the data dir.
    ran = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout == ""
    assert log.is_file() and "Traceback" not in log.read_text()
    assert list((home / "data" / "learn" / "logs").glob("train-*.jsonl"))


def test_schedule_on_macos_adds_a_launchd_plist():
    import plistlib

    from mirador.learn.schedule import LABEL, schedule_text

    text = schedule_text("darwin")
    plist = plistlib.loads(text[text.index("<?xml"):].encode())
    assert plist["Label"] == LABEL and plist["ProgramArguments"][-2:] == ["train", "--quiet"]
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["StartCalendarInterval"] == {"Hour": 3, "Minute": 17}
    assert "<?xml" not in schedule_text("linux")
