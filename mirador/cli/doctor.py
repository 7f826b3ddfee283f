"""`mirador doctor`: check the whole set-up and say what to fix."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

from mirador.errors import EXIT_RUNTIME, EXIT_USER, MiradorError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    exit_code: int = EXIT_USER  # what a failure of this check means for the exit status


def configure(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per check")
    parser.set_defaults(run=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    from mirador.config import paths

    checks: list[Check] = []
    settings = _check_config(checks)
    checks.append(_check_data_dir(paths().data_dir))
    if settings is not None:
        checks.extend(_check_server(settings))
    checks.append(_check_battery())
    if args.json:
        for check in checks:
            print(json.dumps(asdict(check), ensure_ascii=False))
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            print(f"[{mark}] {check.name}: {check.detail}")
            if check.fix and not check.ok:
                print(f"       fix: {check.fix}")
    failed = [c for c in checks if not c.ok]
    return max((c.exit_code for c in failed), default=0)


def _check_config(checks: list[Check]) -> Any:
    from mirador.config import load_settings, paths

    try:
        settings = load_settings()
    except MiradorError as exc:
        checks.append(Check("config", False, exc.message, exc.hint or f"edit {paths().config_file}"))
        return None
    where = settings.paths.config_file
    checks.append(Check("config", True, f"{where}" if where.exists() else "defaults (no config file yet)"))
    return settings


def _check_data_dir(data_dir: Any) -> Check:
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = data_dir / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Check("data dir", False, f"{data_dir} is not writable ({exc.strerror})",
                     "set MIRADOR_HOME to a writable folder, or fix the permissions")
    mode = data_dir.stat().st_mode & 0o777
    if mode & 0o077:
        return Check("data dir", False, f"{data_dir} is readable by others (mode {mode:o})",
                     f"chmod 700 {data_dir}")
    return Check("data dir", True, f"{data_dir} (owner-only)")


def _check_server(settings: Any) -> list[Check]:
    from mirador.cli.common import call_server

    async def probe(client: Any) -> tuple[str, list[dict]]:
        return await client.version(), await client.tags()

    try:
        version, installed = call_server(settings, probe)
    except MiradorError as exc:
        return [Check("server", False, exc.message, exc.hint, EXIT_RUNTIME)]
    checks = [Check("server", True, f"{settings.host} answers, version {version}")]
    names = {m.get("name") or m.get("model") for m in installed}
    names |= {n.removesuffix(":latest") for n in names if n}
    missing = [m for m in settings.chain if m not in names]
    if missing:
        checks.append(Check("models", False, f"the default chain needs {', '.join(missing)}, not installed",
                            " && ".join(f"ollama pull {m}" for m in missing)
                            + "   (or: mirador config set chain MODEL,MODEL)"))
    else:
        checks.append(Check("models", True, f"all {len(settings.chain)} models of the default chain installed"))
    return checks


def _check_battery() -> Check:
    from mirador.energy.sensors import read_power_state

    try:
        state = read_power_state()
    except MiradorError as exc:  # a bad MIRADOR_POWER
        return Check("battery sensor", False, exc.message, exc.hint)
    # No battery is not a failure: energy-aware selection treats this machine as on mains power.
    detail = f"{state.describe()} [{state.source}]"
    if state.notes:
        detail += "; " + "; ".join(state.notes)
    return Check("battery sensor", True, detail)
