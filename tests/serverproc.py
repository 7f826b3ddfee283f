"""A real `mirador serve --engine scripted` process for tests: started, read, stopped, never leaked."""

from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LISTENING = "mirador serve: listening on "
_running: set[subprocess.Popen] = set()


@dataclass
class ServerProcess:
    url: str  # "http://127.0.0.1:PORT"
    host: str  # "127.0.0.1:PORT", as OLLAMA_HOST takes it
    port: int
    proc: subprocess.Popen
    record_file: Path
    script_file: Path
    log_file: Path  # the server's stderr
    stdout_lines: list[str] = field(default_factory=list)

    def requests(self) -> list[dict[str, Any]]:
        """Every request the server received so far: {"method", "path", "body"}, oldest first."""
        if not self.record_file.exists():
            return []
        lines = self.record_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def chat_bodies(self) -> list[dict[str, Any]]:
        """The bodies of every /api/chat request so far, oldest first."""
        return [r["body"] for r in self.requests() if r["path"] == "/api/chat"]

    def stderr(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, then wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _running.discard(self.proc)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _running.discard(self.proc)


def write_script(tmp_path: Path, models: dict[str, Any] | None = None, **options: Any) -> tuple[Path, Path]:
    """Write a scripted-engine script; returns (script file, record file)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    record = tmp_path / "requests.ndjson"
    script: dict[str, Any] = {"record": str(record), **options}
    if models is not None:
        script["models"] = models
    script_file = tmp_path / "script.json"
    script_file.write_text(json.dumps(script, indent=2), encoding="utf-8")
    return script_file, record


def start_scripted_server(
    tmp_path: Path, models: dict[str, Any] | None = None, *, extra_args: list[str] | None = None,
    **options: Any,
) -> ServerProcess:
    """Start a scripted server on a free port; `options` are top-level script keys
    (max_loaded_models, max_queue). models=None means the built-in fast:1b, mid:3b, big:8b."""
    if (tmp_path / "script.json").exists():  # a second server in one test gets its own folder
        tmp_path = tmp_path / f"server-{len(list(tmp_path.glob('server-*'))) + 1}"
    script_file, record = write_script(tmp_path, models, **options)
    log_file = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "mirador", "serve", "--engine", "scripted", "--port", "0",
            "--script", str(script_file), *(extra_args or [])]
    with log_file.open("wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                cwd=tmp_path, env=env)
    _running.add(proc)
    server = ServerProcess("", "", 0, proc, record, script_file, log_file)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_stdout, args=(proc, lines, server.stdout_lines), daemon=True).start()
    try:
        first = lines.get(timeout=30)
    except queue.Empty:
        first = None
    if first is None or not first.startswith(LISTENING):
        server.kill()
        raise RuntimeError(f"the scripted server did not start: {first!r}\n{server.stderr()}")
    server.url = first[len(LISTENING):].split()[0]
    server.host = server.url.removeprefix("http://")
    server.port = int(server.host.rsplit(":", 1)[1])
    return server


def _read_stdout(proc: subprocess.Popen, lines: queue.Queue, keep: list[str]) -> None:
    # Drained to the end so the server can never block on a full pipe.
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        keep.append(line)
        lines.put(line)
    lines.put(None)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
