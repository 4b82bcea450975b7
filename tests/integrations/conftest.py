"""Each adapter runs against an in-process engine and against a real local server; a
`Target` says how to reach one fresh memory and what has been written into it."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from memagent.client import Client

SERVER_START_SECONDS = 60
_ids = itertools.count()


@dataclass
class Target:
    """One fresh memory: `kwargs` reach it (memory= plus engine= or server=), `written()` lists
    the texts written into it, `sources()` their labels (a server keeps them; an engine does not),
    `step()` the writes its pool holds now."""

    kind: str
    kwargs: dict[str, Any]
    written: Callable[[], list[str]]
    step: Callable[[], int]
    sources: Callable[[], list[str]] = field(default=lambda: [])

    @property
    def memory(self) -> str:
        return self.kwargs["memory"]


class EngineWrites:
    """Records every text written through an engine, by pool; the engine still does the write."""

    def __init__(self, engine):
        self.texts: dict[int, list[str]] = {}
        self._write = engine.write

    def __call__(self, state, text, **kwargs):
        receipt = self._write(state, text, **kwargs)
        self.texts.setdefault(id(state), []).append(text)
        return receipt


@pytest.fixture
def engine_writes(tiny_engine, monkeypatch) -> EngineWrites:
    recorder = EngineWrites(tiny_engine)
    monkeypatch.setattr(tiny_engine, "write", recorder)
    return recorder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server_address(tmp_path_factory) -> Iterator[str]:
    """A real `memagent serve` on loopback with the tiny random model."""
    port = _free_port()
    folder = tmp_path_factory.mktemp("memagent-serve")
    log_path = folder / "server.log"
    command = [sys.executable, "-c", "import sys; from memagent.cli import main; sys.exit(main())", "serve",
               "--model", "random:tiny", "--no-auth", "--port", str(port), "--data-dir", str(folder / "data"),
               "--metrics-port", "-1"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        address = f"127.0.0.1:{port}"
        try:
            _wait_until_serving(address, process, log_path)
            yield address
        finally:
            process.terminate()
            process.wait(timeout=30)


def _wait_until_serving(address: str, process: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    client = Client(address)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"memagent serve exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            client.list()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def server_client(server_address) -> Iterator[Client]:
    with Client(server_address) as client:
        yield client


def new_memory_id() -> str:
    return f"test-{os.getpid()}-{next(_ids)}"


@pytest.fixture(params=["engine", "server"])
def target(request) -> Target:
    memory = new_memory_id()
    if request.param == "engine":
        engine = request.getfixturevalue("tiny_engine")
        writes = request.getfixturevalue("engine_writes")
        pool = engine.pool(memory)
        return Target(
            "engine",
            {"memory": memory, "engine": engine},
            lambda: list(writes.texts.get(id(pool.pool), [])),
            lambda: pool.step,
        )
    client = request.getfixturevalue("server_client")
    address = request.getfixturevalue("server_address")
    client.create(memory)
    return Target(
        "server",
        {"memory": memory, "server": address},
        lambda: [e.text for e in client.entries(memory)],
        lambda: client.get(memory).step,
        lambda: [e.source for e in client.entries(memory)],
    )
