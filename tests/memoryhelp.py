"""Helpers for the memory tests: a realistic install, history rows, waiting for the background sync."""

from __future__ import annotations

import json
import time
from pathlib import Path

from clirun import run_mirador

MODELS = {
    name: {"text": f"[{name}] answer.", "parameter_size": size}
    for name, size in [("llama3.2:1b", "1.2B"), ("llama3.1:8b", "8.0B"), ("qwen2.5-coder:7b", "7.6B"),
                       ("deepseek-coder:6.7b", "6.7B"), ("mistral:7b", "7.2B")]
}


def route_json(args: list[str], home: Path, host: str) -> dict:
    result = run_mirador(["route", "--json", *args], home, host)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def chain_of(report: dict) -> dict[str, str]:
    return {stage["step"]: stage["model"] for stage in report["chain"]}


def observed_upto(home: Path) -> int:
    try:
        return max(json.loads((home / "data" / "memory" / "observed.json").read_text()).values())
    except (OSError, ValueError):
        return 0


def wait_observed(home: Path, exchange_id: int, timeout: float = 60) -> None:
    """The detached `memory sync` an ask starts: wait until it has observed `exchange_id`."""
    deadline = time.monotonic() + timeout
    while observed_upto(home) < exchange_id:
        assert time.monotonic() < deadline, "the background memory sync never caught up"
        time.sleep(0.2)
    time.sleep(0.3)  # let it close the store before the test's home goes away


def save_exchanges(home: Path, rows: list[tuple[str, list[str]]], created_at: float = 0.0) -> list[int]:
    """Exchanges straight into history.db (prompt, chain of models), as `ask` saves them."""
    import os

    from mirador.history import ExchangeRecord, HistoryStore, StageRecord

    os.environ["MIRADOR_HOME"] = str(home)
    ids = []
    with HistoryStore(home / "data" / "history.db") as store:
        for prompt, models in rows:
            stages = [StageRecord(i, m, "answer", 0.8, f"[{m}] answer about {prompt[:40]}")
                      for i, m in enumerate(models)]
            ids.append(store.save_exchange(ExchangeRecord(prompt, "complete", stages, created_at=created_at))[0])
    return ids
