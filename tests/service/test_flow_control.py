"""Deadlines, cancellation and a full queue: generation stops between steps; the server stays responsive."""

from __future__ import annotations

import time

import grpc
import pytest
from memagent_server.limits import Limits

from memagent.client import ClientError

from .conftest import RunningServer

pytestmark = pytest.mark.timeout(120)
LONG = {"max_new_tokens": 2000, "stop": ["never appears in the output"]}


@pytest.fixture(scope="module")
def small_server(tiny_engine, tmp_path_factory):
    running = RunningServer(
        tiny_engine,
        tmp_path_factory.mktemp("data"),
        max_pending=2,
        max_pending_per_tenant=2,
        limits=Limits(max_new_tokens=2000),
    )
    with running.client(None) as client:
        client.create("m")
        client.inject("m", "Some words so that the pool is not empty.")
    yield running
    running.stop()


def _idle_soon(server: RunningServer, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.server.worker.pending == 0:
            return True
        time.sleep(0.02)
    return False


def test_deadline_stops_generation(small_server):
    with small_server.client(None, timeout=0.3) as client:
        start = time.monotonic()
        with pytest.raises(ClientError) as err:
            client.complete("m", "Once upon a time", **LONG)
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 2
    assert _idle_soon(small_server)


def test_cancelled_stream_stops_generation(small_server):
    with small_server.client(None) as client:
        pieces = client.generate("m", "Once upon a time", **LONG)
        for _ in zip(range(3), pieces):
            pass
        pieces.close()
        assert _idle_soon(small_server)
        assert client.get("m").step == 1


def test_full_queue_answers_resource_exhausted(small_server):
    with small_server.client(None) as a, small_server.client(None) as b, small_server.client(None) as c:
        streams = [a.generate("m", "Once upon a time", **LONG), b.generate("m", "Long ago", **LONG)]
        for stream in streams:
            next(stream)  # both admitted and decoding
        with pytest.raises(ClientError) as err:
            c.get("m")
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_pending=2" in err.value.details
        for stream in streams:
            stream.close()
        assert _idle_soon(small_server)
        assert c.get("m").entries == 1


def test_streams_abandoned_mid_decode_leave_the_server_healthy(small_server):
    """Clients closing their channels while the server streams to them, over and over."""
    for _ in range(60):
        with small_server.client(None) as a, small_server.client(None) as b:
            streams = [a.generate("m", "Once upon a time", **LONG), b.generate("m", "Long ago", **LONG)]
            for stream in streams:
                next(stream)
        assert _idle_soon(small_server)
    with small_server.client(None) as client:
        assert client.get("m").entries == 1


def test_a_full_cache_budget_answers_resource_exhausted(small_server, tiny_engine):
    from memagent.engine import CacheBudget

    saved, tiny_engine.cache_budget = tiny_engine.cache_budget, CacheBudget(1)
    try:
        with small_server.client(None) as client, pytest.raises(ClientError) as refused:
            client.ask("m", "Is there room?")
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "does not fit" in refused.value.details
    finally:
        tiny_engine.cache_budget = saved
    with small_server.client(None) as client:
        client.ask("m", "Is there room?")  # answered again once the budget has room
