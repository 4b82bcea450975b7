"""Shutdown: health says NOT_SERVING while calls in progress drain (the listener stays open),
the grace period is a flag, a second signal exits at once, and no acknowledged write is lost."""

from __future__ import annotations

import signal
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from memagent_server.process import ServerProcess

from memagent.client import Client, ClientError
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc

pytestmark = pytest.mark.timeout(240)


class HeldCall:
    """An Import whose request stream stays open until released: a call in progress."""

    def __init__(self, address: str):
        self.release = threading.Event()
        self.channel = grpc.insecure_channel(address)
        stub = memagent_pb2_grpc.MemoryServiceStub(self.channel)
        self.future = stub.Import.future(self._requests())

    def _requests(self):
        yield pb.StateChunk(header=pb.StateHeader(memory_id="held", format="memagent.state/1"))
        self.release.wait(120)

    def close(self) -> None:
        self.release.set()
        self.channel.close()


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _in_progress(server: ServerProcess) -> float:
    import urllib.request

    (serving,) = [line for line in server.log_lines() if line["message"] == "serving"]
    with urllib.request.urlopen(f"http://{serving['metrics']}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("memagent_calls_in_progress "):
                return float(line.split()[1])
    raise AssertionError("no memagent_calls_in_progress metric")


def _wait_for(condition, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_drain_is_visible_and_a_second_signal_exits_at_once(tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "first.log", "--grace-seconds", "120", "--metrics-port", "0")
    with Client(server.address) as client:
        client.create("m")
        acknowledged = [client.inject("m", f"Fact {i} before the shutdown.").entry_id for i in range(3)]
    held = HeldCall(server.address)
    try:
        _wait_for(lambda: _in_progress(server) == 1)
        assert _health(server.address) == health_pb2.HealthCheckResponse.SERVING
        server.signal(signal.SIGTERM)
        _wait_for(lambda: any(line["message"] == "draining" for line in server.log_lines()))
        assert _health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING  # listener still open
        with Client(server.address) as late, pytest.raises(ClientError) as err:
            late.list()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details
        assert server.process.poll() is None  # still draining, well inside its 120 s
        server.signal(signal.SIGTERM)
        assert server.process.wait(20) == 1
    finally:
        held.close()

    server = ServerProcess(data, tmp_path / "second.log", "--grace-seconds", "1", "--metrics-port", "0")
    try:
        with Client(server.address) as client:
            assert [e.entry_id for e in client.entries("m")] == acknowledged
        held = HeldCall(server.address)
        try:
            _wait_for(lambda: _in_progress(server) == 1)
            server.signal(signal.SIGTERM)  # the held call outlives the 1 s grace period: cut off
            assert server.process.wait(60) == 0
        finally:
            held.close()
    finally:
        if server.process.poll() is None:
            server.kill()
