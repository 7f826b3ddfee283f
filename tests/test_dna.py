"""ModelDNA files: schema, validation errors that name line/key/allowed values, migration, commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clirun import mirador_env, run_mirador

from mirador.dna.schema import FIELDS, SCHEMA_VERSION, ModelDNA, parse_value_text
from mirador.dna.similarity import blend, compare, jaccard
from mirador.dna.store import DEFAULT_FILE, load_file, render
from mirador.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def dna_file(home: Path) -> Path:
    return home / "config" / "dna.yaml"


def write_dna(home: Path, text: str) -> Path:
    path = dna_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_the_repository_default_is_the_one_shipped_in_the_package():
    # The package carries its own copy so that a pip-installed Mirador finds it.
    assert (REPO / "dna" / "default.yaml").read_text() == DEFAULT_FILE.read_text()
    dna = load_file(DEFAULT_FILE)
    assert dna == ModelDNA()
    text = DEFAULT_FILE.read_text()
    for key in FIELDS:  # every field is in the file, with a comment above it
        name = key.split(".")[-1]
        line = next(i for i, line in enumerate(text.splitlines()) if line.strip().startswith(f"{name}:"))
        assert text.splitlines()[line - 1].strip().startswith("#"), key


def test_render_round_trips_every_field():
    dna = ModelDNA().replace(verbosity=0.25, preferred_frameworks=["python", "fast api"], language="French",
                             format__code_first=True, reasoning_style="creative")
    text = render(dna)
    assert load_file(Path("x.yaml"), text) == dna
    assert "# How much to write" in text  # the comments survive


@pytest.mark.parametrize(("text", "line", "key", "allowed"), [
    ("schema_version: 2\nreasoning_style: creative\nverbosity: 1.4\n", 3, "verbosity", "a number from 0 to 1"),
    ("verbosity: 0.5\nverbositty: 0.2\n", 2, "verbositty", "did you mean 'verbosity'"),
    ("technical_depth: high\n", 1, "technical_depth", "a number from 0 to 1"),
    ("preferred_frameworks: python\n", 1, "preferred_frameworks", "a list of names"),
    ("response_pace: slow\n", 1, "response_pace", "one of deliberate, quick"),
    ("format:\n  code_first: sometimes\n", 2, "format.code_first", "true or false"),
    ("format:\n  colour: blue\n", 2, "format.colour", "structure, code_first, examples"),
    ("format: bullets\n", 1, "format", "format.structure"),
])
def test_bad_values_name_line_key_and_allowed_values(tmp_path, text, line, key, allowed):
    write_dna(tmp_path, text)
    result = run_mirador(["dna", "show"], tmp_path)
    assert result.returncode == 1
    assert f"line {line}" in result.stderr and f"'{key}'" in result.stderr, result.stderr
    assert allowed in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_and_empty_file(tmp_path):
    write_dna(tmp_path, "verbosity: 0.5\npreferred_frameworks: [python, fastapi\ntone: neutral\n")
    result = run_mirador(["dna", "show"], tmp_path)
    assert result.returncode == 1 and "line 2" in result.stderr and "preferred_frameworks" in result.stderr
    assert "YAML syntax error" in result.stderr
    write_dna(tmp_path, "")
    result = run_mirador(["dna", "show"], tmp_path)
    assert result.returncode == 1 and "empty" in result.stderr and "dna reset" in result.stderr
    assert dna_file(tmp_path).read_text() == ""  # reported, never overwritten


def test_newer_schema_is_refused_and_older_is_migrated(tmp_path):
    write_dna(tmp_path, f"schema_version: {SCHEMA_VERSION + 1}\nverbosity: 0.5\nwarp_factor: 9\n")
    result = run_mirador(["dna", "show"], tmp_path)
    assert result.returncode == 1
    assert f"schema version {SCHEMA_VERSION + 1}" in result.stderr and "newer Mirador" in result.stderr
    assert "line 1" in result.stderr
    write_dna(tmp_path, "schema_version: 1\npace: quick\nverbosity: 5\ntechnical_depth: 2\n"
                        "frameworks: [django]\nexpertise: [statistics]\n")
    result = run_mirador(["dna", "show", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["schema_version"] == SCHEMA_VERSION
    assert shown["response_pace"] == "quick" and shown["verbosity"] == 1.0 and shown["technical_depth"] == 0.25
    assert shown["preferred_frameworks"] == ["django"] and shown["domain_expertise"] == ["statistics"]
    write_dna(tmp_path, "schema_version: 1\nframeworks: nope\n")  # an error in a migrated file keeps its line
    result = run_mirador(["dna", "show"], tmp_path)
    assert result.returncode == 1 and "line 2" in result.stderr and "preferred_frameworks" in result.stderr


def test_first_use_creates_the_file_from_the_default(tmp_path):
    assert not dna_file(tmp_path).exists()
    result = run_mirador(["dna", "show", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert dna_file(tmp_path).read_text() == DEFAULT_FILE.read_text()
    assert dna_file(tmp_path).stat().st_mode & 0o777 == 0o600
    assert json.loads(result.stdout) == ModelDNA().to_nested()


def test_set_diff_and_reset(tmp_path):
    assert run_mirador(["dna", "set", "verbosity", "0.2"], tmp_path).returncode == 0
    assert run_mirador(["dna", "set", "preferred_frameworks", "python, fastapi"], tmp_path).returncode == 0
    assert run_mirador(["dna", "set", "format.code_first", "yes"], tmp_path).returncode == 0
    bad = run_mirador(["dna", "set", "verbosity", "1.4"], tmp_path)
    assert bad.returncode == 1 and "out of range" in bad.stderr and "0 to 1" in bad.stderr
    bad = run_mirador(["dna", "set", "reasoning", "creative"], tmp_path)
    assert bad.returncode == 1 and "reasoning_style" in bad.stderr
    text = dna_file(tmp_path).read_text()
    assert "verbosity: 0.2" in text and "preferred_frameworks: [python, fastapi]" in text
    assert "# How much to write" in text
    diff = run_mirador(["dna", "diff", "--json"], tmp_path)
    assert {f["key"] for f in json.loads(diff.stdout)["fields"]} == {
        "verbosity", "preferred_frameworks", "format.code_first"}
    other = tmp_path / "theirs.yaml"
    other.write_text("verbosity: 0.2\n")
    diff = run_mirador(["dna", "diff", str(other)], tmp_path)
    assert "preferred_frameworks" in diff.stdout and "verbosity" not in diff.stdout
    reset = run_mirador(["dna", "reset"], tmp_path)
    assert reset.returncode == 0
    assert dna_file(tmp_path).read_text() == DEFAULT_FILE.read_text()
    assert "verbosity: 0.2" in (tmp_path / "config" / "dna.yaml.bak").read_text()


def test_set_refuses_to_overwrite_a_broken_file(tmp_path):
    path = write_dna(tmp_path, "verbosity: [\n")
    result = run_mirador(["dna", "set", "verbosity", "0.3"], tmp_path)
    assert result.returncode == 1 and path.read_text() == "verbosity: [\n"


def test_similarity_is_defined_per_kind():
    mine = ModelDNA().replace(verbosity=0.2, preferred_frameworks=["Python", "django"], tone="direct")
    theirs = ModelDNA().replace(verbosity=0.6, preferred_frameworks=["python", "flask"], tone="formal")
    result = compare(mine, theirs)
    by_key = {f.key: f for f in result.fields}
    assert by_key["verbosity"].similarity == pytest.approx(0.6) and by_key["verbosity"].measure == "distance"
    assert by_key["preferred_frameworks"].similarity == pytest.approx(1 / 3)
    assert by_key["tone"].similarity == 0 and by_key["reasoning_style"].similarity == 1
    weights = sum(f.weight for f in result.fields)
    expected = (weights - 1.5 * 0.4 - 1.0 * (2 / 3) - 0.5) / weights
    assert result.score == pytest.approx(expected)
    assert compare(mine, mine).score == 1.0
    assert jaccard([], []) == 1.0
    blended = blend(mine, theirs)
    assert blended["verbosity"] == pytest.approx(0.4)
    assert blended["preferred_frameworks"] == ["Python", "django", "flask"]
    assert blended["tone"] == "direct"  # categories keep your own


def test_crossover_command(tmp_path):
    run_mirador(["dna", "set", "verbosity", "0.2"], tmp_path)
    theirs = tmp_path / "friend.yaml"
    theirs.write_text("schema_version: 2\nverbosity: 0.8\ndomain_expertise: [biology]\n")
    result = run_mirador(["dna", "crossover", str(theirs), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert 0 < report["score"] < 1 and report["written"] is False
    assert run_mirador(["dna", "show", "--json"], tmp_path).stdout.count("0.2") == 1
    result = run_mirador(["dna", "crossover", str(theirs), "--write"], tmp_path)
    assert result.returncode == 0 and "compatibility:" in result.stdout
    shown = json.loads(run_mirador(["dna", "show", "--json"], tmp_path).stdout)
    assert shown["verbosity"] == 0.5 and shown["domain_expertise"] == ["biology"]
    newer = tmp_path / "newer.yaml"
    newer.write_text("schema_version: 99\n")
    result = run_mirador(["dna", "crossover", str(newer)], tmp_path)
    assert result.returncode == 1 and "newer Mirador" in result.stderr
    missing = run_mirador(["dna", "crossover", str(tmp_path / "nope.yaml")], tmp_path)
    assert missing.returncode == 1 and "no such DNA file" in missing.stderr


def test_value_parsing_for_set():
    assert parse_value_text("preferred_frameworks", "[a, 'b']") == ["a", "b"]
    assert parse_value_text("preferred_frameworks", "") == []
    assert parse_value_text("format.examples", "off") is False
    with pytest.raises(ConfigError, match="expected a number"):
        parse_value_text("verbosity", "lots")


def test_ask_path_load_is_cached_and_skips_yaml(tmp_path):
    """A warm load is a stat and a JSON read: PyYAML is not even imported."""
    run_mirador(["dna", "set", "verbosity", "0.3"], tmp_path)
    probe = ("import sys, time; from mirador.config import paths; from mirador.dna.store import load_for_ask; "
             "t = time.perf_counter(); dna = load_for_ask(paths()); ms = (time.perf_counter() - t) * 1000; "
             "print(dna['verbosity'], 'yaml' in sys.modules, round(ms, 2))")
    env = mirador_env(tmp_path)
    first = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split()[:2] == ["0.3", "True"]
    assert second.stdout.split()[:2] == ["0.3", "False"]
    run_mirador(["dna", "set", "verbosity", "0.4"], tmp_path)  # a change is seen at once
    third = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert third.stdout.split()[0] == "0.4"
