"""A server killed with SIGKILL while writes are in flight restarts with every acknowledged write,
and with the same pools an uninterrupted run would have; a retried stream is answered from the log."""

from __future__ import annotations

import asyncio
import tarfile
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from memagent_server.process import ServerProcess
from safetensors.torch import load as load_tensors

from memagent.client import AsyncClient, Client, ClientError
from memagent.store import MemoryStore, NewText

from .conftest import RunningServer

pytestmark = pytest.mark.timeout(180)

MEMORIES = ["m0", "m1", "m2"]
SNAPSHOT_OFTEN = ("--snapshot-every", "5")


def _writer(address: str, worker: int, acknowledged: list, interrupted: list, stop: threading.Event) -> None:
    with Client(address, None, timeout=10) as client:
        n = 0
        while not stop.is_set():
            memory = MEMORIES[(worker + n) % len(MEMORIES)]
            text = f"writer {worker} note {n}: the value of key {worker}-{n} is {worker * 1000 + n}."
            try:
                receipt = client.inject(memory, text, source=f"w{worker}")
            except ClientError as err:
                interrupted.append(err.code)  # the server is gone; this write was never acknowledged
                return
            acknowledged.append((memory, text, receipt.entry_id))
            n += 1


def _pool(client: Client, memory: str, path: Path) -> torch.Tensor:
    client.export(memory, path)
    with tarfile.open(path) as tar:
        return load_tensors(tar.extractfile("pool.safetensors").read())["memory"]


def test_kill_9_during_writes_loses_no_acknowledged_write(tiny_engine, tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "first.log", *SNAPSHOT_OFTEN)
    with Client(server.address) as client:
        for memory in MEMORIES:
            client.create(memory)
    acknowledged: list = []
    interrupted: list = []
    stop = threading.Event()
    writers = [
        threading.Thread(target=_writer, args=(server.address, w, acknowledged, interrupted, stop)) for w in range(6)
    ]
    for t in writers:
        t.start()
    while len(acknowledged) < 60:
        time.sleep(0.01)
    server.kill()  # writers are mid-call
    stop.set()
    for t in writers:
        t.join(30)
    assert interrupted and set(interrupted) == {grpc.StatusCode.UNAVAILABLE}  # writes were in flight
    assert any((data / "default" / m).glob("pool-*.safetensors") for m in MEMORIES)  # recovery = snapshot + tail

    server = ServerProcess(data, tmp_path / "second.log", *SNAPSHOT_OFTEN)
    try:
        with Client(server.address) as client:
            logged = {m: client.entries(m) for m in MEMORIES}
            for memory, text, entry_id in acknowledged:
                assert (entry_id, text) in [(e.entry_id, e.text) for e in logged[memory]]
            for memory, entries in logged.items():
                for worker in range(6):  # each writer's notes in the order it sent them
                    notes = [int(e.text.split()[3][:-1]) for e in entries if e.source == f"w{worker}"]
                    assert notes == sorted(notes)
            # The recovered pools equal those of a run that was never interrupted.
            reference = MemoryStore(tiny_engine, tmp_path / "reference")
            for memory, entries in logged.items():
                reference.create("default", memory)
                reference.inject("default", memory, [NewText(e.text, e.source) for e in entries])
                expected = load_tensors(reference.export("default", memory).pool)["memory"]
                assert torch.equal(_pool(client, memory, tmp_path / f"{memory}.tar"), expected)
            client.inject("m0", "The server takes writes again after recovery.")
    finally:
        assert server.stop() == 0, "a graceful shutdown exits 0"


def test_a_retried_stream_is_answered_from_the_log_across_a_restart(tiny_engine, tmp_path):
    texts = [f"Bulk note {i}: shelf {i} holds box {70 + i}." for i in range(3)]
    server = RunningServer(tiny_engine, tmp_path)
    try:
        with server.client(None) as client:
            client.create("bulk")
            first = client.inject_many("bulk", texts[:2], request_id="load-1")  # its reply "lost"
    finally:
        server.stop()

    async def retry(address: str):
        async with AsyncClient(address) as client:
            return await client.inject_many("bulk", texts, request_id="load-1")

    server = RunningServer(tiny_engine, tmp_path)
    try:
        again = asyncio.run(retry(server.address))
        assert [(r.entry_id, r.step) for r in again[:2]] == [(r.entry_id, r.step) for r in first]
        assert again[2].entry_id == 3
        with server.client(None) as client:
            assert [e.text for e in client.entries("bulk")] == texts
            with pytest.raises(ClientError) as err:
                client.inject_many("bulk", ["Another text."], request_id="load-1")
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and "load-1/0" in err.value.details
    finally:
        server.stop()
