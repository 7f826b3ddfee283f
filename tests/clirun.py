"""Run the real `mirador` command in a subprocess, the way users and scripts do."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

MIRADOR = [sys.executable, "-m", "mirador"]


def mirador_env(home: Path, host: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRADOR_", "OLLAMA_"))}
    env["MIRADOR_HOME"] = str(home)
    if host:
        env["OLLAMA_HOST"] = host
    if "MIRADOR_POWER" not in extra and "MIRADOR_SYSFS_ROOT" not in extra:
        env["MIRADOR_POWER"] = "plugged"  # a plan must not depend on the battery of the machine running the tests
    env.update(extra)
    return env


def run_mirador(args: list[str], home: Path, host: str | None = None, *, input: bytes | str | None = None,
                timeout: float = 60, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run to completion; stdin is empty unless `input` is given (never the test runner's stdin)."""
    data = input.encode() if isinstance(input, str) else input
    result = subprocess.run(MIRADOR + args, input=data if data is not None else b"", capture_output=True,
                            env=mirador_env(home, host, **extra_env), timeout=timeout)
    return subprocess.CompletedProcess(result.args, result.returncode,
                                       result.stdout.decode("utf-8", "replace"),
                                       result.stderr.decode("utf-8", "replace"))


def spawn_mirador(args: list[str], home: Path, host: str | None = None, **extra_env: str) -> subprocess.Popen:
    """Start without waiting, stdout piped, for tests that interrupt it mid-stream."""
    return subprocess.Popen(MIRADOR + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=mirador_env(home, host, **extra_env))


def stage_rows(home: Path) -> list[sqlite3.Row]:
    """Every stage row of the history.db under `home`, oldest exchange first."""
    db = sqlite3.connect(home / "data" / "history.db")
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM stages ORDER BY exchange_id, idx").fetchall()
    finally:
        db.close()
