"""Long store work runs a step at a time: calls on other memories are answered meanwhile, the
calls on one memory keep their arrival order, and deadlines and cancellation stop work between
steps, leaving every logged write to be applied exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import torch
from memagent_server.limits import Limits
from safetensors.torch import load as load_tensors

from memagent.client import ClientError
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc

from .conftest import ALICE, TOKENS, RunningServer

pytestmark = pytest.mark.timeout(240)

NOTES = [f"Note {i}: item {i} is on shelf {i % 7} in room {i % 3}." for i in range(100)]
NEVER = {"max_new_tokens": 400, "stop": ["never appears in the output"]}


def _start(tiny_engine, data_dir) -> RunningServer:
    # No snapshots: a reopened memory replays its whole log.
    never = {"snapshot_every": 10_000, "replay_seconds": float("inf")}
    return RunningServer(tiny_engine, data_dir, tokens=TOKENS, **never, limits=Limits(max_texts_per_request=100))


@pytest.fixture
def running(tiny_engine, tmp_path):
    server = _start(tiny_engine, tmp_path / "data")
    yield server
    server.stop()


def _until(condition, seconds: float = 60) -> None:
    """Wait for `condition` (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server never got there"
        time.sleep(0.005)


@contextlib.contextmanager
def _stub(server: RunningServer) -> Iterator[memagent_pb2_grpc.MemoryServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        yield memagent_pb2_grpc.MemoryServiceStub(channel)


def _inject(stub, memory: str, texts, timeout: float | None = None) -> grpc.Future:
    """One `Inject` of many texts (the client sends one text per Inject), in flight."""
    request = pb.InjectRequest(memory_id=memory, texts=[pb.Text(text=t) for t in texts])
    return stub.Inject.future(request, metadata=[("authorization", f"Bearer {ALICE}")], timeout=timeout)


class WorkerGate:
    """Holds the engine worker with a task of its own until opened: what is queued stays queued."""

    def __init__(self, server: RunningServer):
        self.server, self.entered, self.opened = server, threading.Event(), threading.Event()

    def __enter__(self):
        held = self.server.server.worker.run("gate", self._hold)
        self.done = asyncio.run_coroutine_threadsafe(held, self.server.loop)
        assert self.entered.wait(60)
        return self

    def _hold(self) -> None:
        self.entered.set()
        self.opened.wait(120)

    def __exit__(self, *exc):
        self.opened.set()
        self.done.result(60)


def _pending(server: RunningServer) -> int:
    return server.server.worker.pending_by_tenant["alice"]


def _pool(client, memory: str, path: Path) -> torch.Tensor:
    client.export(memory, path)
    with tarfile.open(path) as tar:
        return load_tensors(tar.extractfile("pool.safetensors").read())["memory"]


def _filled(client, memory: str) -> None:
    client.create(memory)
    client.inject_many(memory, NOTES)


def test_an_ask_on_another_memory_is_answered_during_a_long_inject(running, applies):
    with running.client() as client, _stub(running) as stub:
        client.create("a")
        client.create("b")
        client.inject("b", "Bob's cat is called Miso.")
        before = applies.chunks
        inject = _inject(stub, "a", NOTES)
        _until(lambda: applies.chunks > before)  # writing
        assert client.ask("b", "What is the cat called?", max_new_tokens=1) is not None
        assert not inject.done()
        assert [r.entry_id for r in inject.result(120).receipts] == list(range(1, 101))


def test_an_ask_on_another_memory_is_answered_during_a_forget_rebuild(running, applies):
    with running.client() as client, ThreadPoolExecutor(1) as background:
        _filled(client, "a")
        client.create("b")
        before = applies.chunks
        forget = background.submit(client.forget, "a", [1])
        _until(lambda: applies.chunks > before)  # rebuilding
        assert client.ask("b", "What is here?", max_new_tokens=1) is not None
        assert not forget.done()
        assert forget.result(120).memory.entries == 99


def test_an_ask_on_another_memory_is_answered_during_a_replay(tiny_engine, tmp_path, applies):
    server = _start(tiny_engine, tmp_path)
    with server.client() as client:
        _filled(client, "a")
        client.create("b")
    server.stop()
    assert not list((tmp_path / "alice" / "a").glob("pool-*"))  # a's log is all there is
    server = _start(tiny_engine, tmp_path)
    try:
        with server.client() as client, ThreadPoolExecutor(1) as background:
            before = applies.chunks
            replaying = background.submit(client.ask, "a", "Where is item 7?", max_new_tokens=1)
            _until(lambda: applies.chunks > before)  # replaying a's log
            assert client.ask("b", "What is here?", max_new_tokens=1) is not None
            assert not replaying.done()
            assert replaying.result(120) is not None
            assert applies.chunks - before == len(NOTES)
    finally:
        server.stop()


def test_the_calls_on_one_memory_run_in_their_arrival_order(running):
    """Reads and writes sent while a write runs apply in the order they came: each read sees
    every write sent before it, whole, and none sent after; a read started before a write sees
    none of it."""
    with running.client() as client, _stub(running) as stub, ThreadPoolExecutor(6) as background:
        client.create("m")
        early = client.generate("m", "Once upon a time", **NEVER)
        next(iter(early))  # started before every write below
        calls = [
            ("write", NOTES[:10]),
            ("read", None),
            ("write", [NOTES[10] + " and more" * 350]),  # a text of two chunks
            ("read", None),
            ("write", NOTES[11:14]),
            ("read", None),
        ]
        sent = []
        with WorkerGate(running):
            for n, (kind, texts) in enumerate(calls, start=1):
                if kind == "write":
                    sent.append(_inject(stub, "m", texts))
                else:
                    sent.append(background.submit(client.complete, "m", "The notes say", max_new_tokens=2))
                _until(lambda: _pending(running) == 1 + n)  # arrived (the early read still runs)
        writes = [sent[i].result(120).receipts for i in (0, 2, 4)]
        assert [[r.entry_id for r in w] for w in writes] == [list(range(1, 11)), [11], [12, 13, 14]]
        assert writes[1][0].chunks == 2
        assert [sent[i].result(120).usage.step for i in (1, 3, 5)] == [w[-1].step for w in writes] == [10, 12, 15]
        list(early)
        assert early.usage.step == 0


def test_a_queued_call_whose_deadline_passed_never_runs(running):
    with running.client() as client:
        client.create("m")
        with WorkerGate(running), running.client(ALICE, timeout=0.5) as hasty:
            for call in (lambda: hasty.inject("m", "Too late."), lambda: hasty.create("late")):
                with pytest.raises(ClientError) as err:
                    call()
                assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            # The server's deadline is the client's plus the call's transit: open the gate once
            # the server, too, has given both calls up.
            _until(lambda: _pending(running) == 0)
        assert client.get("m").entries == 0
        assert [m.memory_id for m in client.list()] == ["m"]


@pytest.mark.parametrize("stop", ["cancel", "deadline"])
def test_a_write_stopped_midway_is_applied_once_from_its_log(tiny_engine, tmp_path, applies, stop):
    server = _start(tiny_engine, tmp_path / "data")
    try:
        with server.client() as client, _stub(server) as stub:
            client.create("m")
            before = applies.chunks
            inject = _inject(stub, "m", NOTES, timeout=5 if stop == "deadline" else None)
            _until(lambda: applies.chunks > before)  # logged, and writing
            with WorkerGate(server):
                if stop == "cancel":
                    inject.cancel()
                with pytest.raises(grpc.RpcError if stop == "deadline" else grpc.FutureCancelledError) as err:
                    inject.result(60)
                if stop == "deadline":
                    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                _until(lambda: _pending(server) == 0)  # the server let go of the call
            _until(lambda: server.server.worker.pending == 0)
            assert applies.chunks - before < len(NOTES)  # it stopped between steps
            assert client.get("m").residency == "disk"  # the half-written pool was dropped
            assert [e.text for e in client.entries("m")] == NOTES  # logged before it was applied
            _filled(client, "ref")
            expected = _pool(client, "ref", tmp_path / "ref.tar")
            assert torch.equal(_pool(client, "m", tmp_path / "m.tar"), expected)
        server.stop()
        server = _start(tiny_engine, tmp_path / "data")
        with server.client() as client:
            assert torch.equal(_pool(client, "m", tmp_path / "again.tar"), expected)
    finally:
        server.stop()
