"""The capability matrix: the default, the user's overlay, validation errors that say what to fix, the cache."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest
from clirun import run_mirador

from mirador.errors import ConfigError
from mirador.routing.installed import spec_for
from mirador.routing.matrix import cache_path, check_file, default_matrix_path, load_matrix, user_matrix_path

REQUIRED_DOMAINS = {"financial_analysis", "creative_writing", "coding", "math_reasoning", "research_synthesis",
                    "summarization", "everyday_questions"}


def write_overlay(home: Path, text: str) -> Path:
    file = home / "config" / "capability_matrix.yaml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(textwrap.dedent(text), encoding="utf-8")
    return file


def error_of(home: Path, text: str) -> ConfigError:
    file = write_overlay(home, text)
    with pytest.raises(ConfigError) as caught:
        load_matrix()
    assert str(file) in caught.value.message  # every error names the file it is in
    return caught.value


# -- the default matrix -------------------------------------------------------------------------


def test_default_matrix_covers_the_domains_with_full_entries(mirador_home):
    matrix = load_matrix()
    assert REQUIRED_DOMAINS <= set(matrix.domains)
    for domain in matrix.domains.values():
        assert domain.description and len(domain.examples) >= 10 and domain.keywords
        assert len(domain.chain) >= 2
        for step in domain.chain:
            assert step.reason and 0 <= step.confidence <= 1 and step.alternatives
            assert step.best in matrix.models
    for model in matrix.models.values():
        assert model.params_b > 0 and model.context > 0 and model.strengths and model.tags and model.quantization


def test_the_package_finds_the_matrix_at_the_repository_root():
    repo_root = Path(__file__).resolve().parent.parent
    assert default_matrix_path() == (repo_root / "capability_matrix.yaml").resolve()


@pytest.mark.parametrize("installed, family", [
    ("phi3:mini", "phi-3"), ("phi3:3.8b", "phi-3"), ("phi3", "phi-3"), ("phi3:latest", "phi-3"),
    ("phi3:3.8b-mini-4k-instruct-q4_K_M", "phi-3"), ("phi3:medium", "phi-3-medium"),
    ("llama3.2:1b", "llama3.2-1b"), ("llama3.2", "llama3.2-3b"), ("qwen2.5-coder:7b", "qwen2.5-coder-7b"),
    ("qwen2.5:7b-instruct-q8_0", "qwen2.5-7b"), ("smollm2:135m", "smollm2-135m"),
    ("registry.ollama.ai/library/gemma2:9b", "gemma2-9b"), ("all-minilm", "all-minilm"),
])
def test_ollama_tags_satisfy_their_family(mirador_home, installed, family):
    spec = spec_for(load_matrix(), installed)
    assert spec is not None and spec.id == family


@pytest.mark.parametrize("installed", ["my-model:latest", "phi3.5-turbo:1b", "qwen2.5-coder:1.5b-base-extra"])
def test_unknown_tags_match_nothing_or_their_own_family_only(mirador_home, installed):
    spec = spec_for(load_matrix(), installed)
    assert spec is None or installed.startswith(spec.tags[0].split(":")[0])


# -- the overlay --------------------------------------------------------------------------------


def test_the_user_overlay_changes_only_the_keys_it_names(mirador_home):
    write_overlay(mirador_home, """\
        routing:
          min_confidence: 0.3
        domains:
          translation: null
          coding:
            description: my own words
        models:
          my-coder:
            params_b: 7
            context: 16384
            strengths: [coding]
            tags: ["my-coder:latest"]
        """)
    matrix = load_matrix()
    assert matrix.min_confidence == 0.3 and matrix.fallback_domain == "everyday_questions"
    assert "translation" not in matrix.domains
    assert matrix.domains["coding"].description == "my own words"
    assert matrix.domains["coding"].chain[1].best == "qwen2.5-coder-7b"  # untouched keys stay
    assert "my-coder" in matrix.models and "phi-3" in matrix.models


def test_a_user_chain_replaces_the_default_one(mirador_home):
    write_overlay(mirador_home, """\
        domains:
          coding:
            chain:
              - {step: only, needs: [coding], best: qwen2.5-coder-7b, reason: mine, confidence: 0.9,
                 alternatives: [llama3.1-8b]}
        """)
    chain = load_matrix().domains["coding"].chain
    assert [s.name for s in chain] == ["only"]


# -- bad input: each names file, line, key and what was expected ---------------------------------


def test_yaml_syntax_error_names_the_line_and_key(mirador_home):
    exc = error_of(mirador_home, """\
        domains:
          coding:
            description: "unterminated
            chain: []
        """)
    assert "line 3" in exc.message and "'description'" in exc.message and "YAML syntax error" in exc.message


def test_a_model_that_no_section_defines(mirador_home):
    exc = error_of(mirador_home, """\
        domains:
          coding:
            chain:
              - step: implementation
                needs: [coding]
                best: qwen9-coder
                reason: imaginary
                confidence: 0.8
                alternatives: [llama3.1-8b]
        """)
    assert "line 6" in exc.message and "domains.coding.chain.0.best" in exc.message
    assert "unknown model 'qwen9-coder'" in exc.message and "models" in exc.hint


def test_a_confidence_outside_zero_to_one(mirador_home):
    exc = error_of(mirador_home, """\
        domains:
          everyday_questions:
            chain:
              - step: quick
                needs: [fast]
                best: llama3.2-1b
                reason: fast
                confidence: 1.7
                alternatives: [qwen2.5-0.5b]
        """)
    assert "line 8" in exc.message and "confidence" in exc.message
    assert "between 0 and 1" in exc.message and "1.7" in exc.message


def test_an_empty_chain(mirador_home):
    exc = error_of(mirador_home, """\
        domains:
          summarization:
            chain: []
        """)
    assert "line 3" in exc.message and "domains.summarization.chain" in exc.message and "empty" in exc.message
    assert "at least one step" in exc.message


def test_step_alternatives_that_loop_back(mirador_home):
    exc = error_of(mirador_home, """\
        domains:
          coding:
            chain:
              - step: implementation
                needs: [coding]
                best: qwen2.5-coder-7b
                reason: good
                confidence: 0.8
                alternatives: [llama3.1-8b, qwen2.5-coder-7b]
        """)
    assert "line 9" in exc.message and "alternatives.1" in exc.message and "loop back" in exc.message


def test_model_alternatives_that_form_a_cycle(mirador_home):
    exc = error_of(mirador_home, """\
        models:
          phi3.5:
            alternatives: [phi-3-medium]
          phi-3-medium:
            alternatives: [phi-3]
        """)
    assert "loop" in exc.message and "phi-3 → phi3.5 → phi-3-medium → phi-3" in exc.message
    assert "line" in exc.message


def test_typos_get_a_suggestion(mirador_home):
    exc = error_of(mirador_home, """\
        domains:
          coding:
            chain:
              - {step: x, needs: [codding], best: qwen2.5-coder-7b, reason: r, confidence: 0.5}
        """)
    assert "unknown strength 'codding'" in exc.message and "did you mean coding" in exc.hint
    exc = error_of(mirador_home, """\
        domains:
          coding:
            confidance: 0.5
        """)
    assert "unknown key 'confidance'" in exc.message


def test_unquoted_colon_in_an_example_is_explained(mirador_home):
    exc = error_of(mirador_home, """\
        domains:
          coding:
            examples:
              - translate this: hello
        """)
    assert "item 1 is a mapping" in exc.message and "quotes" in exc.hint


def test_an_overlay_that_breaks_the_merged_matrix_is_blamed_on_its_own_line(mirador_home):
    file = write_overlay(mirador_home, "routing:\n  fallback_domain: cooking\n")
    with pytest.raises(ConfigError) as caught:
        check_file(file)
    assert f"{file}, line 2" in caught.value.message and "not a domain" in caught.value.message


# -- the compiled cache ---------------------------------------------------------------------------


def test_the_compiled_cache_is_used_and_refreshed_when_a_file_changes(mirador_home):
    first = load_matrix()
    cache = cache_path()
    assert cache.exists() and stat.S_IMODE(cache.stat().st_mode) == 0o600
    stored = json.loads(cache.read_text())
    assert stored["matrix"]["routing"][2] == first.digest
    assert load_matrix() == first  # rebuilt from the cache, identical
    write_overlay(mirador_home, "routing:\n  min_confidence: 0.2\n")
    assert load_matrix().min_confidence == 0.2  # new stamp: re-read, re-validated
    write_overlay(mirador_home, "routing:\n  min_confidence: 7\n")
    with pytest.raises(ConfigError):
        load_matrix()  # a broken file is never served from the cache
    user_matrix_path().unlink()
    assert load_matrix().min_confidence == first.min_confidence


def test_a_corrupt_cache_is_ignored(mirador_home):
    load_matrix()
    cache_path().write_text("{not json")
    assert load_matrix().domains


def test_the_cache_spares_the_yaml_parser(mirador_home):
    load_matrix()
    code = ("import sys; sys.modules['yaml'] = None\n"
            "from mirador.routing.matrix import load_matrix\n"
            "print(len(load_matrix().domains))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "MIRADOR_HOME": str(mirador_home)})
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 7


# -- the command ----------------------------------------------------------------------------------


def test_matrix_validate_reports_each_problem_with_exit_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("domains:\n  coding:\n    chain:\n      - {step: a, best: nope, reason: r, confidence: 0.5}\n")
    result = run_mirador(["matrix", "validate", str(bad)], tmp_path)
    assert result.returncode == 1
    assert f"{bad}, line 4" in result.stderr and "unknown model 'nope'" in result.stderr
    assert "Traceback" not in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("routing:\n  min_confidence: 0.5\n")
    result = run_mirador(["matrix", "validate", str(good)], tmp_path)
    assert result.returncode == 0 and "is valid" in result.stdout
    result = run_mirador(["matrix", "validate", str(tmp_path / "missing.yaml")], tmp_path)
    assert result.returncode == 1 and "does not exist" in result.stderr


def test_matrix_path_and_show(tmp_path):
    result = run_mirador(["matrix", "path"], tmp_path)
    assert result.returncode == 0
    assert str(default_matrix_path()) in result.stdout and "not created yet" in result.stdout
    shown = run_mirador(["matrix", "show"], tmp_path)
    assert shown.returncode == 0 and "coding:" in shown.stdout and "qwen2.5-coder-7b" in shown.stdout
    full = run_mirador(["matrix", "show", "--json"], tmp_path)
    assert set(json.loads(full.stdout)["domains"]) >= REQUIRED_DOMAINS


def _editor(tmp_path: Path, content: str | None) -> str:
    """An $EDITOR that replaces the file with `content` (None: leaves it as it is)."""
    script = tmp_path / "editor.py"
    payload = "" if content is None else f"open(sys.argv[1], 'w').write({content!r})"
    script.write_text(f"import sys\n{payload}\n")
    return f"{sys.executable} {script}"


def test_matrix_edit_keeps_the_old_file_unless_the_new_one_validates(tmp_path):
    home = tmp_path / "home"
    user = home / "config" / "capability_matrix.yaml"
    ok = run_mirador(["matrix", "edit"], home, EDITOR=_editor(tmp_path, "routing:\n  min_confidence: 0.3\n"))
    assert ok.returncode == 0, ok.stderr
    assert user.read_text() == "routing:\n  min_confidence: 0.3\n"
    assert stat.S_IMODE(user.stat().st_mode) == 0o600
    broken = run_mirador(["matrix", "edit"], home, EDITOR=_editor(tmp_path, "routing:\n  min_confidence: 1.7\n"))
    assert broken.returncode == 1
    assert "between 0 and 1" in broken.stderr and "unchanged" in broken.stderr
    assert user.read_text() == "routing:\n  min_confidence: 0.3\n"  # the old file stands
    rejected = user.with_name("capability_matrix.yaml.rejected")
    assert rejected.read_text() == "routing:\n  min_confidence: 1.7\n"
    again = run_mirador(["matrix", "edit"], home, EDITOR=_editor(tmp_path, "routing:\n  min_confidence: 0.35\n"))
    assert again.returncode == 0 and "resuming" in again.stderr
    assert user.read_text() == "routing:\n  min_confidence: 0.35\n" and not rejected.exists()
    same = run_mirador(["matrix", "edit"], home, EDITOR=_editor(tmp_path, None))
    assert same.returncode == 0 and "no change" in same.stdout
    assert [p.name for p in user.parent.iterdir()] == ["capability_matrix.yaml"]  # no copies left behind


def test_matrix_edit_with_a_missing_editor_says_how_to_set_one(tmp_path):
    result = run_mirador(["matrix", "edit"], tmp_path, EDITOR="/nonexistent/editor")
    assert result.returncode == 2 and "EDITOR" in result.stderr
