"""The model store, the GGUF header reader, Modelfile parsing and the chat-template sandbox (no server)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
from ggufwriter import write_gguf, write_smollm2_lora
from llamaproc import smollm2_gguf

from mirador.runtime import store as store_module
from mirador.runtime.engines.chat_template import TemplateError, render_chat
from mirador.runtime.gguf import GGUFError, read_header
from mirador.runtime.modelfile import build_model, parse_modelfile, spec_from_json
from mirador.runtime.store import BUILTIN_NAME, ModelStore, StoreError

# -- GGUF header ---------------------------------------------------------------------------------


def test_the_header_of_smollm2_is_read_without_loading_it():
    header = read_header(smollm2_gguf())
    assert header.architecture == "llama" and header.context_length == 8192 and header.embedding_length == 576
    assert header.quantization == "Q4_1" and header.parameter_size == "135M" and not header.is_lora
    assert header.data_end == header.file_size  # every tensor's bytes accounted for, to the last one
    assert "<|im_start|>" in header.chat_template and header.array_lengths["tokenizer.ggml.tokens"] == 49152


def test_damaged_files_are_named_for_what_is_wrong(tmp_path):
    cases = {
        "empty.gguf": (b"", "too small"),
        "text.gguf": (b"just some text, no model here", "magic"),
        "v9.gguf": (b"GGUF" + (9).to_bytes(4, "little") + bytes(16), "version 9"),
        "header.gguf": (smollm2_gguf().read_bytes()[:5000], "ends in the middle of its header"),
        "data.gguf": (smollm2_gguf().read_bytes()[:3_000_000], "truncated"),
    }
    for name, (data, why) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(GGUFError, match=why):
            read_header(path)


def test_a_written_lora_adapter_is_recognised(tmp_path):
    header = read_header(write_smollm2_lora(tmp_path / "lora.gguf", layers=2))
    assert header.is_lora and header.architecture == "llama" and header.tensor_count == 8
    assert header.data_end == header.file_size


# -- the store -----------------------------------------------------------------------------------


def test_the_builtin_model_is_registered_owner_only_and_hashed_once(tmp_path, monkeypatch):
    root = tmp_path / "data" / "models"
    store = ModelStore(root).open()
    [info] = store.model_infos()
    assert info.name == BUILTIN_NAME and info.family == "llama" and info.quantization_level == "Q4_1"
    assert len(info.digest) == 64 and info.size == smollm2_gguf().stat().st_size and info.embedding_length == 576
    for path in (root, root.parent):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "manifest.json").stat().st_mode) == 0o600
    # A second start reads the digest from the manifest: hashing 100 MB again would be slow.
    monkeypatch.setattr(store_module, "_sha256", lambda path: pytest.fail(f"hashed {path} again"))
    assert ModelStore(root).open().model_infos()[0].digest == info.digest


def test_a_deleted_builtin_stays_deleted_until_provided_again(tmp_path):
    root = tmp_path / "models"
    ModelStore(root).open().delete(BUILTIN_NAME)
    store = ModelStore(root).open()
    assert store.model_infos() == [] and store.can_provide(BUILTIN_NAME)
    assert store.provide(BUILTIN_NAME).name == BUILTIN_NAME
    assert [m.name for m in ModelStore(root).open().model_infos()] == [BUILTIN_NAME]
    with pytest.raises(StoreError, match="not found") as missing:
        store.delete("ghost:1b")
    assert missing.value.status == 404


def test_derived_models_share_the_base_file_and_differ_in_digest(tmp_path):
    store = ModelStore(tmp_path / "models").open()
    spec = spec_from_json({"from": BUILTIN_NAME, "system": "Be brief.", "parameters": {"temperature": "0.2",
                                                                                     "stop": ["A:", "B:"]}})
    model, parent = build_model(store, "brief", spec)
    info = store.put(model)
    base = store.info(store.require(BUILTIN_NAME))
    assert parent == BUILTIN_NAME and model.gguf == str(smollm2_gguf()) and info.name == "brief:latest"
    assert info.digest != base.digest and info.system == "Be brief." and info.parent_model == BUILTIN_NAME
    assert model.parameters == {"temperature": 0.2, "top_p": 0.9, "stop": ["A:", "B:"]}  # top_p inherited
    manifest = json.loads((tmp_path / "models" / "manifest.json").read_text())
    assert set(manifest["models"]) == {BUILTIN_NAME, "brief:latest"}
    assert list(tmp_path.joinpath("models").glob("blobs/*")) == []  # nothing was copied


def test_adapters_must_be_lora_ggufs_and_models_must_not_be(tmp_path):
    store = ModelStore(tmp_path / "models").open()
    lora = write_smollm2_lora(tmp_path / "lora.gguf", layers=1)
    model, _ = build_model(store, "tuned", parse_modelfile(f"FROM {BUILTIN_NAME}\nADAPTER {lora}\n"))
    assert store.put(model).size == smollm2_gguf().stat().st_size + lora.stat().st_size
    not_lora, _ = build_model(store, "bad", parse_modelfile(f"FROM {BUILTIN_NAME}\nADAPTER {smollm2_gguf()}\n"))
    with pytest.raises(StoreError, match="not a LoRA adapter"):
        store.put(not_lora)
    with pytest.raises(StoreError, match="is a LoRA adapter, not a model"):
        store.put(build_model(store, "bad", parse_modelfile(f"FROM {lora}"))[0])
    with pytest.raises(StoreError, match="only one adapter"):
        build_model(store, "bad", parse_modelfile(f"FROM {BUILTIN_NAME}\nADAPTER {lora}\nADAPTER {lora}"))


def test_a_model_whose_file_is_damaged_stays_listed_with_unknown_details(tmp_path):
    copy = tmp_path / "copy.gguf"
    write_gguf(copy, {"general.architecture": "llama", "llama.context_length": 128}, {"w": np.ones((2, 32))})
    store = ModelStore(tmp_path / "models", builtin=False).open()
    store.put(build_model(store, "small", parse_modelfile(f"FROM {copy}"))[0])
    copy.write_bytes(copy.read_bytes()[:100])
    [info] = ModelStore(tmp_path / "models", builtin=False).open().model_infos()
    assert info.name == "small:latest" and info.family == "unknown"


# -- Modelfile -----------------------------------------------------------------------------------


def test_a_legacy_modelfile_is_parsed_with_quotes_and_multiline_values():
    spec = parse_modelfile(
        '# a comment\nFROM smollm2:135m\nSYSTEM """You are\na pirate."""\nPARAMETER temperature 0.3\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER stop User:\nPARAMETER num_ctx 2048\nLICENSE MIT\n'
        'TEMPLATE "{{ messages[0].content }}"\n'
    )
    assert spec.source == "smollm2:135m" and spec.system == "You are\na pirate."
    assert spec.parameters == {"temperature": 0.3, "stop": ["<|im_end|>", "User:"], "num_ctx": 2048}
    assert spec.template == "{{ messages[0].content }}"


@pytest.mark.parametrize(("text", "error"), [
    ("FROM x\nPARAMETER warp 9", "unknown parameter 'warp'"),
    ("FROM x\nPARAMETER num_ctx lots", "invalid value for parameter 'num_ctx'"),
    ("FROM x\nSYSTEM \"\"\"never closed", "unterminated"),
    ("FROM x\nRUN rm -rf /", "unknown command 'RUN'"),
])
def test_modelfile_mistakes_are_named(text, error):
    with pytest.raises(StoreError, match=error):
        parse_modelfile(text)


def test_create_requests_that_cannot_work_are_refused(tmp_path):
    store = ModelStore(tmp_path / "models").open()
    for body, error in [
        ({}, "neither 'from' nor 'files'"),
        ({"from": "relative/path.gguf"}, "model 'relative/path.gguf' not found"),
        ({"from": str(tmp_path / "missing.gguf")}, "no such file"),
        ({"files": {"model.gguf": "sha256:" + "a" * 64}}, "upload it first"),
        ({"files": {"model.safetensors": "sha256:" + "a" * 64}}, "exactly one .gguf"),
        ({"from": BUILTIN_NAME, "template": "{{ .System }} {{ .Prompt }}"}, "Go template"),
        ({"from": BUILTIN_NAME, "template": "{% if %}"}, "not valid Jinja"),
        ({"from": BUILTIN_NAME, "quantize": "q4_K_M"}, "quantize is not supported"),
    ]:
        with pytest.raises(StoreError, match=error):
            build_model(store, "x", spec_from_json(body))


# -- chat templates ------------------------------------------------------------------------------


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__['__builtins__']['open']('{marker}', 'w') }}",
    "{{ messages.append(1) }}",
    "{{ 'x' * 100000000 }}",
])
def test_malicious_templates_are_refused_not_run(attack, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(TemplateError, match="refused"):
        render_chat(attack.replace("{marker}", str(marker)), [{"role": "user", "content": "hi"}])
    assert not marker.exists()


def test_templates_get_the_helpers_chat_templates_expect():
    template = ("{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}[U]{{ m.content }}{% endif %}"
                "{% endfor %}{% if add_generation_prompt %}[A]{% endif %}{{ messages | tojson }}")
    text = render_chat(template, [{"role": "user", "content": "héllo <b>"}], bos_token="<s>")
    assert text.startswith("<s>[U]héllo <b>[A]") and '"héllo <b>"' in text
    with pytest.raises(TemplateError, match="refused the conversation: roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", [])


def test_the_store_root_defaults_to_the_data_dir(mirador_home: Path):
    assert ModelStore().root == mirador_home / "data" / "models"
