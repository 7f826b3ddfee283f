"""The second half of scripts/quickstart: find or start a model server, then ask.

Uses an Ollama (or any Ollama-compatible server) already answering on
OLLAMA_HOST, picking its smallest installed chat model; otherwise starts
Mirador's embedded runtime (`mirador serve`, llama.cpp with SmolLM2-135M) on a
free port for the one question and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

MIRADOR = str(Path(sys.executable).with_name("mirador"))
EMBEDDED_MODEL = "smollm2:135m"
NOT_CHAT = ("embed", "minilm", "bge", "nomic", "rerank")


def say(text: str) -> None:
    print(f"quickstart: {text}", file=sys.stderr, flush=True)


def running_server() -> tuple[str, list[dict]] | None:
    from mirador.config import DEFAULT_HOST, normalize_host

    host = normalize_host(os.environ.get("OLLAMA_HOST") or DEFAULT_HOST)
    try:
        with urllib.request.urlopen(f"{host}/api/tags", timeout=2) as response:
            return host, json.load(response).get("models") or []
    except (OSError, ValueError, urllib.error.URLError):
        return None


def smallest_chat_model(models: list[dict]) -> str | None:
    chat = [m for m in models if not any(word in m.get("name", "").lower() for word in NOT_CHAT)]
    chat.sort(key=lambda m: m.get("size") or 0)
    return chat[0]["name"] if chat else None


def ask(host: str, model: str, question: str, *options: str) -> int:
    env = {**os.environ, "OLLAMA_HOST": host}
    return subprocess.call([MIRADOR, "ask", "-m", model, *options, question], env=env)


def with_embedded_server(question: str) -> int:
    say("no model server answers; starting Mirador's embedded runtime (llama.cpp, SmolLM2-135M)")
    server = subprocess.Popen([MIRADOR, "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if "listening on" not in line:
            say("the embedded runtime did not start; run `mirador serve` to see why")
            return 3
        host = line.split("listening on ", 1)[1].split()[0]
        say(f"embedded runtime on {host}; asking {EMBEDDED_MODEL}")
        # A 135M model samples nonsense now and then; greedy decoding makes the
        # first answer a user sees reproducible.
        return ask(host, EMBEDDED_MODEL, question, "-o", "temperature=0")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    question = " ".join(sys.argv[1:]).strip() or "What is the capital of France?"
    found = running_server()
    if found is None:
        return with_embedded_server(question)
    host, models = found
    model = smallest_chat_model(models)
    if model is None:
        say(f"the server at {host} has no chat model; using the embedded runtime instead")
        return with_embedded_server(question)
    say(f"using the server at {host} and its smallest chat model, {model}")
    return ask(host, model, question)


if __name__ == "__main__":
    raise SystemExit(main())
