"""`mirador train` end to end: lock, dataset, base weights, training, validation, export, deployment.

Cron-safe by construction: one run at a time (an flock the kernel drops if the process dies, so a
killed run never blocks the next), a `--min-examples` floor under which a run is a quiet no-op (exit
0, with the counts), every folder a run writes to probed before any work (a full disk or a read-only
data dir is one clear error naming the folder, before an hour of training), a `--max-minutes`
budget checked before training and by the trainer between steps, a JSON-lines log per run in
<data dir>/learn/logs/, and nothing shared changes before the very end: the adapter is written in its
own new folder, the runtime's model and state.json change only after validation (validate.py)
passed and the runtime said success (deploy.py). Progress goes through progress.py."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirador.errors import MiradorError
from mirador.learn.deploy import deploy, deployed_name, rollback  # noqa: F401 (rollback: re-exported, train's entry point)
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
    judge: str | None = None  # a larger installed model that compares base and adapted answers
    progress: str = "auto"  # auto | bar | plain | quiet (learn/progress.py)
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
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise MiradorError(f"another `mirador train` is running{who}: it holds the training lock",
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

    def safe_event(self, kind: str, **data: Any) -> None:
        """For the failure path: a log that cannot be written must not hide the error being logged."""
        try:
            self.event(kind, **data)
        except OSError:
            pass


def base_gguf(options: TrainOptions) -> Any:
    """The base's GGUF (learn/base_model.py: --gguf, the runtime's /api/show, Ollama's folder, the store)."""
    from mirador.learn.base_model import locate

    return locate(options.base, options.host, options.gguf)


def dry_run(history: Any, options: TrainOptions) -> dict[str, Any]:
    """What a run would do, writing nothing: the dataset's counts, dates, domains, duplicates dropped,
    and what would be trained on (base and its file, backend, hyperparameters, held-out prompts)."""
    from mirador.learn.dataset import build_dataset
    from mirador.learn.trainers.base import resolve_backend

    data = build_dataset(history)
    summary = data.summary()
    summary["min_examples"] = options.min_examples
    summary["enough"] = data.size >= options.min_examples
    try:
        weights = str(base_gguf(options).path)
    except MiradorError as exc:
        weights = f"not found: {exc.message}"
    summary["would_train"] = {
        "base": options.base, "weights": weights, "backend": resolve_backend(options.backend),
        "hyperparams": options.hp.to_dict(), "max_minutes": options.max_minutes, "margin": options.margin,
        "judge": options.judge, "deploy": deployed_name(options.base) if options.deploy else None,
    }
    summary["held_out_prompts"] = [e.prompt for e in data.valid]
    summary["sanity_prompts"] = list(SANITY_PROMPTS)
    return summary


class DataDirError(MiradorError):
    """The data dir cannot be written (full disk, permissions, a file where a folder must be)."""


def _data_dir_error(exc: OSError, what: str) -> DataDirError:
    where = Path(exc.filename) if exc.filename else None
    folder = where.parent if where is not None and not where.is_dir() else where
    return DataDirError(f"cannot write {what} in {folder or 'the data dir'}: {exc.strerror or exc}",
                        hint="free some disk space or make that folder writable; nothing was deployed")


def preflight(root: Path) -> None:
    """Every folder a run writes to must take a file now, not after an hour of training.

    learn/ and learn/logs are made if missing (every run writes there); adapters/ and base/ are
    probed only where they exist (learn/ being writable covers making them), so a run with nothing
    to do leaves no empty folders behind."""
    for folder, make in ((root, True), (root / "logs", True), (root / "adapters", False), (root / "base", False)):
        probe = folder / f".probe.{os.getpid()}"
        try:
            if make:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            elif not folder.exists():
                continue
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"mirador")
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise DataDirError(f"the training folder {folder} is not writable: {exc.strerror or exc}",
                               hint="free some disk space or make that folder writable; nothing was deployed") \
                from None


def run(history: Any, options: TrainOptions, say: Any = print) -> dict[str, Any]:
    """One training run; returns what happened (also logged), `summary` being its one-line outcome.

    Raises MiradorError on failures; an OSError while writing becomes a DataDirError naming the
    folder. Nothing the runtime serves changes before validation passed and export succeeded."""
    root = learn_dir()
    preflight(root)
    with Lock(root / "train.lock"):
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        log = RunLog(root / "logs", stamp)
        try:
            report = _run_locked(history, options, say, root, stamp, log)
        except OSError as exc:
            error = _data_dir_error(exc, "the run's files")
            log.safe_event("failed", error=error.message)
            raise error from None
        except MiradorError as exc:
            log.safe_event("failed", error=exc.message)
            raise
        return report


def _nothing_to_do(data: Any, options: TrainOptions, log: RunLog) -> dict[str, Any] | None:
    counts = {"examples": data.size, "rated": data.rated, "duplicates_dropped": data.duplicates,
              "near_duplicates_dropped": data.near_duplicates}
    if data.rated == 0:
        why = "no rated history (rate answers with `mirador rate ID 1-5`): nothing to do"
    elif data.size < options.min_examples:
        why = (f"{data.size} well-rated examples (of {data.rated} rated exchanges, "
               f"{data.duplicates + data.near_duplicates} duplicates dropped), fewer than --min-examples "
               f"{options.min_examples}: nothing to do")
    else:
        return None
    log.event("skipped", reason=why, **counts)
    return {"outcome": "skipped", "summary": why, **counts, "log": str(log.path)}


def _run_locked(history: Any, options: TrainOptions, say: Any, root: Path, stamp: str,
                log: RunLog) -> dict[str, Any]:
    from mirador.learn.dataset import build_dataset
    from mirador.learn.gguf_convert import check_architecture, converted_dir
    from mirador.learn.progress import TrainingProgress
    from mirador.learn.trainers.base import get_trainer, resolve_backend
    from mirador.learn.validate import judge, judge_available, validate

    deadline = time.monotonic() + options.max_minutes * 60
    data = build_dataset(history)
    log.event("dataset", **data.summary())
    skipped = _nothing_to_do(data, options, log)
    if skipped:
        return skipped
    if options.judge:
        judge_available(options.host, options.judge)  # before the training, not after
    located = base_gguf(options)
    gguf_path = located.path
    header = check_architecture(gguf_path)  # a header read: before seconds of importing the training libraries
    backend = resolve_backend(options.backend)
    trainer = get_trainer(backend)
    say(f"base weights from {gguf_path} ({located.source}; converted once, cached by digest)")

    def note(text: str) -> None:
        say(text)
        log.event("note", text=text)

    base_dir = converted_dir(gguf_path, digest=located.digest, note=note)
    log.event("base", gguf=str(gguf_path), converted=str(base_dir))
    out = root / "adapters" / stamp
    data.write(out / "data")
    held_out = [e.prompt for e in data.valid]
    prompts = SANITY_PROMPTS + [p for p in held_out if p not in SANITY_PROMPTS] if options.judge else SANITY_PROMPTS
    if time.monotonic() >= deadline:
        return _stopped(options, log, stamp, out, "before training started")
    say(f"training {backend} LoRA on {len(data.train)} examples "
        f"({options.hp.iterations} steps at most, {options.max_minutes:g} min budget)")
    log.event("training", backend=backend, examples=len(data.train), iterations=options.hp.iterations)
    with TrainingProgress(options.progress, log=log.event) as progress:
        result = trainer.train(base_dir, [e.messages() for e in data.train], [e.messages() for e in data.valid],
                               out, options.hp, deadline=deadline, sanity_prompts=prompts, progress=progress,
                               sample_base=bool(options.judge))
    if result.steps == 0:
        return _stopped(options, log, stamp, out, "before the first training step")
    if result.stopped_early:
        say(f"--max-minutes {options.max_minutes:g} reached: {result.stopped_early}")
    report: dict[str, Any] = {"outcome": "rejected", "stamp": stamp, "base": options.base, "log": str(log.path),
                              "hyperparams": options.hp.to_dict(), **result.to_dict()}
    sanity = {p: result.samples[p] for p in SANITY_PROMPTS if p in result.samples}
    verdict = validate(result.valid_before, result.valid_after, sanity, options.margin, result.losses,
                       result.base_samples)
    report["validation"] = verdict
    if options.judge:
        say(f"judging base and adapted answers on {len(held_out)} held-out prompts with {options.judge}")
        report["judge"] = judge(options.host, options.judge, held_out, result.base_samples, result.samples)
    log.event("trained", **report)
    _write_metrics(out, report)
    if not verdict["passed"]:
        report["summary"] = f"not deployed: {verdict['reason']}"
        return report
    from mirador.learn.export import export_gguf_lora

    n_head = int(header.arch_value("attention.head_count"))
    n_head_kv = int(header.arch_value("attention.head_count_kv", n_head))
    adapter = export_gguf_lora(result.adapter_dir, out / "adapter.gguf", n_head, n_head_kv)
    report["adapter"] = str(adapter)
    if options.deploy:
        deployed = deploy(options.host, options.base, adapter, stamp, mode=options.deploy_as,
                          base_gguf=gguf_path, say=say)
        report.update(outcome="deployed", model=deployed["model"], deploy_path=deployed["path"],
                      refusal=deployed["refusal"])
        report["summary"] = f"deployed as {deployed['model']} ({deployed['path']}): {verdict['reason']}"
    else:
        report["outcome"] = "validated"
        report["summary"] = f"validated, not deployed (--no-deploy): {verdict['reason']}"
    _write_metrics(out, report)
    log.event(report["outcome"], adapter=str(adapter))
    return report


def _stopped(options: TrainOptions, log: RunLog, stamp: str, out: Path, when: str) -> dict[str, Any]:
    why = f"--max-minutes {options.max_minutes:g} reached {when}: stopped, nothing deployed"
    log.event("stopped", reason=why)
    report = {"outcome": "stopped", "stamp": stamp, "summary": why, "log": str(log.path)}
    _write_metrics(out, report)  # `train list` shows it stopped, not "incomplete" like a killed run
    return report


def _write_metrics(out: Path, report: dict[str, Any]) -> None:
    """metrics.json beside the adapter, atomically: `train list` never reads half a file."""
    from mirador.yamlfile import write_private_atomically

    write_private_atomically(out / "metrics.json", json.dumps(report, indent=1, default=str))


def status() -> dict[str, Any]:
    from mirador.learn.deploy import read_state, state_file

    root = learn_dir()
    logs = sorted((root / "logs").glob("train-*.jsonl")) if (root / "logs").is_dir() else []
    last = None
    if logs:
        lines = logs[-1].read_text(encoding="utf-8").splitlines()
        last = json.loads(lines[-1]) if lines else None
    return {**read_state(state_file()), "last_log": str(logs[-1]) if logs else None, "last_event": last,
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
