"""`mirador ask` on a real pseudo-terminal: headers, streamed text, footers."""

from __future__ import annotations

import os
import pty
import select
import subprocess

from clirun import MIRADOR, mirador_env

MODELS = {
    "fast:1b": {"text": "Quick answer."},
    "big:8b": {"text": "Considered final answer.", "load_time": 0.3},
}


def run_on_terminal(args: list[str], home, host: str) -> tuple[int, str]:
    master, slave = pty.openpty()
    env = mirador_env(home, host, TERM="xterm-256color", COLUMNS="100", LINES="40")
    proc = subprocess.Popen(MIRADOR + args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


def test_stages_get_headers_text_and_timings(server_factory, tmp_path):
    server = server_factory(MODELS)
    code, screen = run_on_terminal(["ask", "--chain", "fast:1b,big:8b", "why?"], tmp_path, server.host)
    assert code == 0, screen
    assert "stage 1/2" in screen and "stage 2/2" in screen
    assert "fast:1b" in screen and "big:8b" in screen and "confidence 0.50" in screen
    assert "Quick answer." in screen.replace("\x1b[2m", "").replace("\x1b[0m", "")
    assert "Considered final answer." in screen
    assert screen.count("first token") == 2 and "load 3" in screen  # big:8b was cold: its load shows
    assert "\x1b[" in screen  # a terminal gets styling
    assert "saved as #1" in screen


def test_a_failed_stage_is_shown_on_the_terminal(server_factory, tmp_path):
    server = server_factory(MODELS)
    code, screen = run_on_terminal(["ask", "--chain", "ghost:1b,big:8b", "why?"], tmp_path, server.host)
    assert code == 1
    assert "stage 1 (ghost:1b) failed" in screen and "ollama pull ghost:1b" in screen
    assert "Considered final answer." in screen
