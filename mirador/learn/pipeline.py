"""`mirador train` end to end: lock, dataset, base weights, training, validation, export, deployment.

Cron-safe by construction: one run at a time (an flock the kernel drops if the process dies), a
`--min-examples` floor under which a run is a quiet no-op, a `--max-minutes` budget the trainer
stops at, a JSON-lines log per run in <data dir>/learn/logs/, and nothing shared changes before the
very end (the adapter is written in its own new folder; the runtime's model and state.json change
only after validation passed and the server said success).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError
from mirador.learn.trainers.base import Hyperparams

SANITY_PROMPTS = ["What is the capital of France?", "Give me one tip for writing clear emails."]


@dataclass
class TrainOptions:
    base: str = "smollm2:135m"
    host: str = "http://127.0.0.1:11434"
    backend: str = "torch"
    min_examples: int = 20
    max_minutes: float = 60.0
    margin: float = 0.01  # the held-out loss must fall by this fraction
    gguf: Path | None = None  # the base's GGUF; default: the embedded runtime's store
    deploy: bool = True
    deploy_as: str = "auto"  # auto | adapter | fused (learn/deploy.py)
    hp: Hyperparams = field(default_factory=Hyperparams)


def learn_dir() -> Path:
    from mirador.config import paths

    return paths().data_dir / "learn"


class Lock:
    """An exclusive flock on learn/train.lock; a second run is refused, a dead run's lock vanishes."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self) -> Lock:
        import fcntl
        import os

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MiradorError("another `mirador train` is running (it holds the training lock)",
                               hint=f"wait for it; the lock is {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        if self.fd is not None:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


class RunLog:
    def __init__(self, folder: Path, stamp: str):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = folder / f"train-{stamp}.jsonl"

    def event(self, kind: str, **data: Any) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"t": round(time.time(), 3), "event": kind, **data}, default=str) + "\n")


def base_gguf(options: TrainOptions) -> Any:
    """The base's GGUF (learn/base_model.py: --gguf, the runtime's /api/show, Ollama's folder, the store)."""
    from mirador.learn.base_model import locate

    return locate(options.base, options.host, options.gguf)


def dry_run(history: Any, options: TrainOptions) -> dict[str, Any]:
    from mirador.learn.dataset import build_dataset

    data = build_dataset(history)
    summary = data.summary()
    summary["min_examples"] = options.min_examples
    summary["enough"] = data.size >= options.min_examples
    summary["held_out_prompts"] = [e.prompt for e in data.valid]
    return summary


def run(history: Any, options: TrainOptions, say: Any = print) -> dict[str, Any]:
    """One training run; returns what happened (also logged). Raises MiradorError on failures."""
    from mirador.learn.dataset import build_dataset

    root = learn_dir()
    with Lock(root / "train.lock"):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        log = RunLog(root / "logs", stamp)
        deadline = time.monotonic() + options.max_minutes * 60
        data = build_dataset(history)
        log.event("dataset", **data.summary())
        if data.size < options.min_examples:
            log.event("skipped", reason="too few examples")
            say(f"{data.size} well-rated examples, fewer than --min-examples {options.min_examples}: nothing to do")
            return {"outcome": "skipped", "examples": data.size, "log": str(log.path)}
        out = root / "adapters" / stamp
        data.write(out / "data")
        from mirador.learn.gguf_convert import converted_dir
        from mirador.learn.trainers.base import get_trainer

        trainer = get_trainer(options.backend)
        located = base_gguf(options)
        gguf_path = located.path
        say(f"base weights from {gguf_path} ({located.source}; converted once, cached by digest)")
        base_dir = converted_dir(gguf_path, digest=located.digest)
        log.event("base", gguf=str(gguf_path), converted=str(base_dir))
        say(f"training {options.backend} LoRA on {len(data.train)} examples "
            f"({options.hp.iterations} steps at most, {options.max_minutes:g} min budget)")
        result = trainer.train(base_dir, [e.messages() for e in data.train], [e.messages() for e in data.valid],
                               out, options.hp, deadline=deadline, sanity_prompts=SANITY_PROMPTS)
        report = {"outcome": "rejected", "stamp": stamp, "base": options.base, "log": str(log.path),
                  "hyperparams": options.hp.to_dict(),
                  **result.to_dict()}
        verdict = validate(result.valid_before, result.valid_after, result.samples, options.margin)
        report["validation"] = verdict
        log.event("trained", **report)
        (out / "metrics.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        if not verdict["passed"]:
            return report  # the caller says why it was not deployed
        from mirador.learn.export import export_gguf_lora
        from mirador.runtime.gguf import read_header

        header = read_header(gguf_path)
        n_head = int(header.arch_value("attention.head_count"))
        n_head_kv = int(header.arch_value("attention.head_count_kv", n_head))
        adapter = export_gguf_lora(result.adapter_dir, out / "adapter.gguf", n_head, n_head_kv)
        report["adapter"] = str(adapter)
        if options.deploy:
            deployed = deploy(options.host, options.base, adapter, stamp, mode=options.deploy_as,
                              base_gguf=gguf_path, say=say)
            report.update(outcome="deployed", model=deployed["model"], deploy_path=deployed["path"],
                          refusal=deployed["refusal"])
        else:
            report["outcome"] = "validated"
        (out / "metrics.json").write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
        log.event(report["outcome"], adapter=str(adapter))
        return report


def validate(before: float, after: float, samples: dict[str, str], margin: float) -> dict[str, Any]:
    if math.isnan(before) or math.isnan(after):
        return {"passed": False, "reason": "no held-out examples to validate on"}
    if not after < before * (1 - margin):
        return {"passed": False, "reason": f"held-out loss {before:.4f} -> {after:.4f} did not improve by "
                                           f"{margin:.0%}"}
    for prompt, answer in samples.items():
        words = answer.split()
        # Coherent enough: says something, and not one word over and over (the collapse LoRA can cause).
        if not words or (len(words) >= 6 and len(set(words)) / len(words) < 0.3):
            return {"passed": False, "reason": f"the sanity prompt {prompt!r} got an incoherent answer: {answer!r}"}
    return {"passed": True, "reason": f"held-out loss {before:.4f} -> {after:.4f}"}


def deploy(host: str, base: str, adapter: Path, stamp: str, **how: Any) -> dict[str, Any]:
    """learn/deploy.py's atomic switch: {model, path ("adapter" or "fused"), stamp, refusal}."""
    from mirador.learn.deploy import deploy as deploy_adapter

    return deploy_adapter(host, base, adapter, stamp, **how)


def rollback(host: str) -> dict[str, Any]:
    from mirador.learn.deploy import rollback as rollback_adapter

    return rollback_adapter(host)


def status() -> dict[str, Any]:
    from mirador.learn.deploy import read_state

    root = learn_dir()
    logs = sorted((root / "logs").glob("train-*.jsonl")) if (root / "logs").is_dir() else []
    last = None
    if logs:
        lines = logs[-1].read_text(encoding="utf-8").splitlines()
        last = json.loads(lines[-1]) if lines else None
    return {**read_state(root / "state.json"), "last_log": str(logs[-1]) if logs else None, "last_event": last,
            "running": _locked(root / "train.lock")}


def list_adapters() -> list[dict[str, Any]]:
    folder = learn_dir() / "adapters"
    out = []
    for run_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {"outcome": "incomplete"}  # killed mid-run: kept for the record, never deployed
        out.append({"stamp": run_dir.name, "outcome": metrics.get("outcome"),
                    "valid_before": metrics.get("valid_before"), "valid_after": metrics.get("valid_after"),
                    "adapter": metrics.get("adapter")})
    return out


def _locked(path: Path) -> bool:
    import fcntl
    import os

    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
