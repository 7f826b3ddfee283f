"""Shared fixtures: an isolated MIRADOR_HOME and real scripted servers, stopped at teardown."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests import serverproc, clirun

from serverproc import ServerProcess, start_scripted_server  # noqa: E402


@pytest.fixture
def mirador_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "mirador-home"
    home.mkdir()
    monkeypatch.setenv("MIRADOR_HOME", str(home))
    return home


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """server_factory(models=None, **script_options) -> ServerProcess; all stopped at teardown."""
    started: list[ServerProcess] = []

    def start(models: dict[str, Any] | None = None, **options: Any) -> ServerProcess:
        server = start_scripted_server(tmp_path, models, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def scripted_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A scripted server with the built-in models fast:1b, mid:3b, big:8b."""
    return server_factory()


@pytest.fixture
def free_port() -> int:
    """A loopback port nothing listens on (for "server not running" tests)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
