"""The optional abstractive skeleton: a small model turns the older turns into key points.

Off by default (the extractive skeleton keeps facts verbatim and costs no
model call); `mirador context --summarise MODEL` or the `context_summariser`
setting turns it on. It runs in the compiler's thread, beside stage 1, so it
uses its own event loop and connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

PROMPT = (
    "List the key facts, decisions, names, numbers and constraints stated in this conversation, one per "
    "line, each a short complete sentence. Leave out greetings and explanations. No preamble."
)
MAX_INPUT_CHARS = 24_000  # a small model's window: the oldest text beyond this is dropped first


def summariser(model: str, host: str, *, keep_alive: Any = "5m",
               connect_timeout: float = 5.0) -> Callable[[list[dict[str, str]]], list[str]]:
    def summarise(messages: list[dict[str, str]]) -> list[str]:
        transcript = "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in messages)
        transcript = transcript[-MAX_INPUT_CHARS:]
        return asyncio.run(_ask(model, host, transcript, keep_alive, connect_timeout)).splitlines()

    return summarise


async def _ask(model: str, host: str, transcript: str, keep_alive: Any, connect_timeout: float) -> str:
    from mirador.runtime.client import OllamaClient

    parts: list[str] = []
    async with OllamaClient(host, connect_timeout=connect_timeout) as client:
        messages = [{"role": "system", "content": PROMPT}, {"role": "user", "content": transcript}]
        async for chunk in client.chat(model, messages, keep_alive=keep_alive, options={"temperature": 0}):
            parts.append((chunk.get("message") or {}).get("content") or "")
    return "".join(parts)
