"""`mirador dna edit` through a real editor process: round trip, a broken edit, a failing editor."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from clirun import run_mirador

from mirador.dna.store import DEFAULT_FILE

# An "editor": step N of the plan (a JSON list) is applied on its Nth run. A step is a list of
# [old, new] replacements, or "fail" (exit 3 after scribbling), or "noop".
EDITOR = r"""
import json, pathlib, sys
plan_file, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
runs = plan_file.with_suffix(".runs")
n = int(runs.read_text()) if runs.exists() else 0
runs.write_text(str(n + 1))
step = json.loads(plan_file.read_text())[n]
if step == "noop":
    sys.exit(0)
text = target.read_text()
if step == "fail":
    target.write_text(text + "\n# half an edit\n")
    sys.exit(3)
for old, new in step:
    assert old in text, old
    text = text.replace(old, new)
target.write_text(text)
"""


def editor(tmp_path: Path, plan: list) -> dict[str, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "editor.py"
    script.write_text(EDITOR)
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    return {"EDITOR": f"{sys.executable} {script} {plan_file}"}


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "plan.runs").read_text())


def dna_text(home: Path) -> str:
    return (home / "config" / "dna.yaml").read_text()


def leftovers(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "config").glob(".dna.edit-*"))


def test_a_real_edit_round_trips(tmp_path):
    env = editor(tmp_path, [[["verbosity: 0.5", "verbosity: 0.9"], ["tone: neutral", "tone: friendly  # mine"]]])
    result = run_mirador(["dna", "edit"], tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert "saved" in result.stdout
    text = dna_text(tmp_path)
    assert "verbosity: 0.9" in text and "tone: friendly  # mine" in text  # the user's own text, comments kept
    shown = json.loads(run_mirador(["dna", "show", "--json"], tmp_path).stdout)
    assert shown["verbosity"] == 0.9 and shown["tone"] == "friendly"
    assert (tmp_path / "config" / "dna.yaml").stat().st_mode & 0o777 == 0o600
    assert leftovers(tmp_path) == []


def test_an_invalid_edit_names_line_key_and_allowed_values_and_offers_another_go(tmp_path):
    env = editor(tmp_path, [[["verbosity: 0.5", "verbosity: 1.4"]], [["verbosity: 1.4", "verbosity: 0.7"]]])
    result = run_mirador(["dna", "edit"], tmp_path, input="y\n", **env)
    assert result.returncode == 0, result.stderr
    assert "line 16" in result.stderr and "'verbosity'" in result.stderr and "0 to 1" in result.stderr
    assert "Edit again?" in result.stderr
    assert runs(tmp_path) == 2
    assert "verbosity: 0.7" in dna_text(tmp_path)


def test_declining_to_fix_keeps_the_old_file_and_the_edit(tmp_path):
    run_mirador(["dna", "set", "verbosity", "0.3"], tmp_path)
    before = dna_text(tmp_path)
    env = editor(tmp_path, [[["verbosity: 0.3", "verbosity: 1.4"], ["tone: neutral", "colour: blue"]]])
    result = run_mirador(["dna", "edit"], tmp_path, input="n\n", **env)
    assert result.returncode == 1
    assert dna_text(tmp_path) == before  # the old file stays until a valid one replaces it
    [kept] = leftovers(tmp_path)
    assert kept in result.stderr and "verbosity: 1.4" in (tmp_path / "config" / kept).read_text()
    # With no one at stdin to answer, the same: no second editor run, nothing replaced.
    env = editor(tmp_path / "again", [[["tone: neutral", "tone: grumpy"]]])
    result = run_mirador(["dna", "edit"], tmp_path, **env)
    assert result.returncode == 1 and "one of neutral, friendly, formal, direct" in result.stderr
    assert dna_text(tmp_path) == before


def test_editor_unset_or_failing(tmp_path):
    result = run_mirador(["dna", "edit"], tmp_path, EDITOR="", VISUAL="")
    assert result.returncode == 2 and "$EDITOR is not set" in result.stderr and "dna set" in result.stderr
    result = run_mirador(["dna", "edit"], tmp_path, EDITOR="/no/such/editor")
    assert result.returncode == 2 and "not found" in result.stderr
    env = editor(tmp_path, ["fail"])
    result = run_mirador(["dna", "edit"], tmp_path, **env)
    assert result.returncode == 1 and "exited with status 3" in result.stderr
    assert dna_text(tmp_path) == DEFAULT_FILE.read_text()
    assert "Traceback" not in result.stderr


def test_no_change_is_not_an_error(tmp_path):
    env = editor(tmp_path, ["noop"])
    result = run_mirador(["dna", "edit"], tmp_path, **env)
    assert result.returncode == 0 and "no change" in result.stdout
    assert leftovers(tmp_path) == []
