"""The DNA changes what each model receives: proven on the request bodies the scripted server records."""

from __future__ import annotations

import json

import pytest
from clirun import run_mirador

from mirador.dna.apply import fragment, options
from mirador.dna.schema import ModelDNA

MODELS = {
    "fast:1b": {"text": "Quick answer."},
    "echo:1b": {"text": "Echo:", "echo": True},
}


def chat_bodies(server) -> list[dict]:
    return [r["body"] for r in server.requests() if r["path"] == "/api/chat"]


def system_of(body: dict) -> str:
    first = body["messages"][0]
    return first["content"] if first["role"] == "system" else ""


def set_dna(home, **fields):
    for key, value in fields.items():
        result = run_mirador(["dna", "set", key.replace("__", "."), str(value)], home)
        assert result.returncode == 0, result.stderr


def test_dna_shapes_every_stage_and_no_dna_turns_it_off(server_factory, tmp_path):
    server = server_factory(MODELS)
    set_dna(tmp_path, reasoning_style="creative", verbosity=1, language="French",
            preferred_frameworks="python,fastapi", format__structure="bullets")
    result = run_mirador(["ask", "--chain", "fast:1b,echo:1b", "how do I sort a dict?"], tmp_path, server.host)
    assert result.returncode == 0, result.stderr
    ack, final = chat_bodies(server)
    # Stage 1 learns who it talks to, never to be long: brief whatever the verbosity.
    assert "Answer in French." in system_of(ack) and "Prefer python, fastapi" in system_of(ack)
    assert "exhaustive" not in system_of(ack) and "bullet" not in system_of(ack)
    assert ack["options"]["num_predict"] <= 96
    assert ack["options"]["temperature"] == 0.9
    # The final stage gets the whole profile and a long answer limit.
    for phrase in ("Think creatively", "exhaustive", "Use bullet points.", "Answer in French."):
        assert phrase in system_of(final), phrase
    assert final["options"] == {"temperature": 0.9, "top_p": 0.95, "num_predict": 2048}
    # The same question without the DNA: the stages receive none of it.
    result = run_mirador(["ask", "--no-dna", "--chain", "fast:1b,echo:1b", "how do I sort a dict?"], tmp_path,
                         server.host)
    assert result.returncode == 0, result.stderr
    plain_ack, plain_final = chat_bodies(server)[2:]
    assert "preferences" not in system_of(plain_ack) + system_of(plain_final)
    assert "temperature" not in plain_final.get("options", {})


def test_a_change_of_dna_changes_the_request(server_factory, tmp_path):
    server = server_factory(MODELS)
    set_dna(tmp_path, verbosity=0.1, technical_depth=0.9)
    assert run_mirador(["ask", "-m", "echo:1b", "hi"], tmp_path, server.host).returncode == 0
    set_dna(tmp_path, verbosity=0.9, technical_depth=0.1, response_pace="quick")
    assert run_mirador(["ask", "-m", "echo:1b", "hi"], tmp_path, server.host).returncode == 0
    terse, chatty = chat_bodies(server)
    assert "Be as brief as possible." in system_of(terse) and "technically expert" in system_of(terse)
    assert "Be exhaustive" in system_of(chatty) and "plain words" in system_of(chatty)
    assert "Get to the point quickly." in system_of(chatty)
    assert terse["options"]["num_predict"] == round(256 + 1792 * 0.1)
    assert chatty["options"]["num_predict"] == round((256 + 1792 * 0.9) * 0.6)


def test_explicit_options_beat_the_dna(server_factory, tmp_path):
    server = server_factory(MODELS)
    set_dna(tmp_path, reasoning_style="creative")
    result = run_mirador(["ask", "-m", "echo:1b", "-o", "temperature=0.05", "-s", "be terse", "hi"], tmp_path,
                         server.host)
    assert result.returncode == 0, result.stderr
    [body] = chat_bodies(server)
    assert body["options"]["temperature"] == 0.05 and body["options"]["top_p"] == 0.95
    assert system_of(body).startswith("be terse\n\nThe user's preferences:")


def test_no_dna_file_means_nothing_is_added(server_factory, tmp_path):
    """Until the user has a DNA (`mirador dna …` creates it), `ask -m M` sends what `ollama run M` would."""
    server = server_factory(MODELS)
    assert run_mirador(["ask", "-m", "fast:1b", "hello"], tmp_path, server.host).returncode == 0
    [body] = chat_bodies(server)
    assert body["messages"] == [{"role": "user", "content": "hello"}] and "options" not in body


def test_a_broken_dna_stops_ask_with_line_and_key(server_factory, tmp_path):
    server = server_factory(MODELS)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dna.yaml").write_text("verbosity: 1.4\n")
    result = run_mirador(["ask", "-m", "fast:1b", "hello"], tmp_path, server.host)
    assert result.returncode == 1 and "line 1" in result.stderr and "'verbosity'" in result.stderr
    assert chat_bodies(server) == []
    assert run_mirador(["ask", "--no-dna", "-m", "fast:1b", "hello"], tmp_path, server.host).returncode == 0


def test_preview_shows_exactly_what_each_stage_receives(server_factory, tmp_path):
    server = server_factory(MODELS)
    set_dna(tmp_path, tone="formal", verbosity=0.2)
    preview = run_mirador(["dna", "preview", "--chain", "fast:1b,echo:1b", "--json", "why?"], tmp_path)
    assert preview.returncode == 0, preview.stderr
    shown = [json.loads(line) for line in preview.stdout.splitlines()]
    assert run_mirador(["ask", "--chain", "fast:1b,echo:1b", "why?"], tmp_path, server.host).returncode == 0
    ack, final = chat_bodies(server)
    assert shown[0]["messages"] == ack["messages"] and shown[0]["options"] == ack["options"]
    assert shown[1]["messages"][0] == final["messages"][0] and shown[1]["options"] == final["options"]
    text = run_mirador(["dna", "preview", "-m", "fast:1b", "why?"], tmp_path).stdout
    assert "Use a formal tone." in text and "stage 1/1" in text


@pytest.mark.parametrize("verbosity", [0.0, 0.5, 1.0])
def test_quick_ack_stays_brief_whatever_the_verbosity(verbosity):
    dna = ModelDNA().replace(verbosity=verbosity, response_pace="deliberate")
    assert options(dna, "quick_ack")["num_predict"] <= 96
    assert len(fragment(dna, "quick_ack")) < len(fragment(dna, "deep_synthesis"))
    assert options(dna, "core_analysis")["num_predict"] < options(dna, "deep_synthesis")["num_predict"]
