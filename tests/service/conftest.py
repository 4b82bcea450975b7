"""A real server on loopback, in this process (its own event loop thread), on the tiny model."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from memagent_server.limits import Limits
from memagent_server.server import Server, ServerConfig

from memagent.client import Client
from memagent.store import MemoryStore, TenantQuota

TOKENS = {"token-of-alice-0123456789": "alice", "token-of-bob-0123456789ab": "bob"}
ALICE, BOB = list(TOKENS)


class RunningServer:
    def __init__(self, engine, data_dir: Path, **config):
        self.store = MemoryStore(
            engine,
            data_dir,
            snapshot_every=config.pop("snapshot_every", 4),
            replay_seconds=config.pop("replay_seconds", 2.0),
            quota=config.pop("quota", TenantQuota()),
        )
        host = config.pop("host", "127.0.0.1")
        self.server = Server(self.store, ServerConfig(host=host, port=0, **config))
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict] = []  # what the loop would only log: failed callbacks, lost task errors
        self.loop.set_exception_handler(lambda loop, error: self.loop_errors.append(error))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._wait(self.server.start())
        self.address = f"127.0.0.1:{self.server.port}"

    def _wait(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def client(self, token: str | None = ALICE, **options) -> Client:
        return Client(self.address, token, **options)

    def stop(self) -> None:
        self._wait(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.loop_errors, self.loop_errors


@pytest.fixture(scope="module")
def server(tiny_engine, tmp_path_factory):
    running = RunningServer(
        tiny_engine,
        tmp_path_factory.mktemp("data"),
        tokens=TOKENS,
        metrics_port=0,
        limits=Limits(max_text_bytes=4096, max_new_tokens=512, max_texts_per_request=8),
    )
    yield running
    running.stop()


@pytest.fixture
def alice(server):
    with server.client(ALICE) as client:
        yield client


@pytest.fixture
def bob(server):
    with server.client(BOB) as client:
        yield client


def write_tokens(path: Path) -> Path:
    path.write_text(json.dumps({"tokens": TOKENS}))
    return path
