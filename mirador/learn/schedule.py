"""`mirador train --schedule`: the crontab line (and on macOS the launchd plist) for a nightly run.

Printed, never installed: the user decides where it goes (`crontab -e`, ~/Library/LaunchAgents/).
The command names the mirador executable by its absolute path (cron's PATH is short) and carries
MIRADOR_HOME / OLLAMA_HOST when they are set, so the nightly run sees what this shell sees.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

LABEL = "dev.mirador.train"
HOUR, MINUTE = 3, 17  # at night, off the hour that every other cron job picks


def mirador_command() -> list[str]:
    """The absolute command that runs this Mirador: its console script, else `python -m mirador`."""
    beside = Path(sys.executable).parent / "mirador"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("mirador")
    if found:
        return [str(Path(found).resolve())]
    return [str(Path(sys.executable).resolve()), "-m", "mirador"]


def environment() -> dict[str, str]:
    return {key: os.environ[key] for key in ("MIRADOR_HOME", "OLLAMA_HOST") if os.environ.get(key)}


def log_file() -> Path:
    from mirador.config import paths

    return paths().data_dir / "learn" / "logs" / "cron.log"


def crontab_line() -> str:
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in environment().items())
    command = " ".join(shlex.quote(part) for part in [*mirador_command(), "train", "--quiet"])
    log = shlex.quote(str(log_file()))
    return f"{MINUTE} {HOUR} * * * {env + ' ' if env else ''}{command} >> {log} 2>&1"


def launchd_plist() -> str:
    import plistlib

    plist = {
        "Label": LABEL,
        "ProgramArguments": [*mirador_command(), "train", "--quiet"],
        "StartCalendarInterval": {"Hour": HOUR, "Minute": MINUTE},
        "StandardOutPath": str(log_file()),
        "StandardErrorPath": str(log_file()),
        "EnvironmentVariables": environment(),
        "LowPriorityIO": True,
        "Nice": 10,
    }
    if not plist["EnvironmentVariables"]:
        del plist["EnvironmentVariables"]
    return plistlib.dumps(plist).decode("utf-8")


def schedule_text(platform: str | None = None) -> str:
    platform = platform or sys.platform
    lines = ["# Nightly `mirador train` (add it with `crontab -e`; nothing was installed):", crontab_line()]
    if platform == "darwin":
        lines += ["", f"# Or with launchd: save as ~/Library/LaunchAgents/{LABEL}.plist, then "
                      f"`launchctl load ~/Library/LaunchAgents/{LABEL}.plist`:", launchd_plist().rstrip()]
    return "\n".join(lines) + "\n"
