"""Fair between tenants: one tenant's many requests neither take every place nor run first."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import grpc
import pytest
from memagent_server.worker import DeadlinePassed, EngineWorker

from memagent.client import ClientError
from memagent.store import TenantQuota
from memagent.store.memory_store import STATE_FORMAT
from memagent.v1 import memagent_pb2 as pb
from memagent.v1 import memagent_pb2_grpc

from .conftest import ALICE, BOB, TOKENS, RunningServer

pytestmark = pytest.mark.timeout(120)
LONG = {"max_new_tokens": 2000, "stop": ["never appears in the output"]}


def test_tenants_take_turns_on_the_worker():
    """Alice queued five tasks before Bob's one: Bob's runs after one of hers, not after all."""
    worker = EngineWorker(max_pending=16)
    ran: list[str] = []
    gate = threading.Event()

    async def scenario():
        blocker = asyncio.ensure_future(worker.run("carol", gate.wait))
        await asyncio.sleep(0.05)  # the worker thread is now held by carol's task
        queued = [worker.run("alice", ran.append, f"alice {i}") for i in range(5)]
        queued.append(worker.run("bob", ran.append, "bob 0"))
        tasks = [asyncio.ensure_future(q) for q in queued]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocker, *tasks)

    asyncio.run(scenario())
    worker.shutdown()
    assert ran == ["alice 0", "bob 0", "alice 1", "alice 2", "alice 3", "alice 4"]


def test_a_tenants_own_writes_keep_their_order():
    worker = EngineWorker(max_pending=16)
    ran: list[int] = []

    async def scenario():
        await asyncio.gather(*(worker.run("alice", ran.append, i) for i in range(50)))

    asyncio.run(scenario())
    worker.shutdown()
    assert ran == list(range(50))


def test_a_queued_task_whose_caller_left_is_skipped():
    worker = EngineWorker(max_pending=16)
    ran: list[str] = []
    gate = threading.Event()

    async def scenario():
        blocker = asyncio.ensure_future(worker.run("alice", gate.wait))
        await asyncio.sleep(0.05)
        left = asyncio.ensure_future(worker.run("alice", ran.append, "left"))
        stays = asyncio.ensure_future(worker.run("alice", ran.append, "stays"))
        await asyncio.sleep(0.05)
        left.cancel()
        await asyncio.gather(left, return_exceptions=True)  # its cancellation has reached the queue
        gate.set()
        await asyncio.gather(blocker, stays)

    asyncio.run(scenario())
    worker.shutdown()
    assert ran == ["stays"]


def test_a_long_calls_steps_let_other_calls_run_between_them():
    worker = EngineWorker(max_pending=16)
    ran: list[str] = []
    gate = threading.Event()

    def three_steps():
        for i in range(3):
            ran.append(f"alice step {i}")
            yield
        return "written"

    async def scenario():
        blocker = asyncio.ensure_future(worker.run("carol", gate.wait))
        await asyncio.sleep(0.05)
        long = asyncio.ensure_future(worker.run_steps("alice", three_steps()))
        short = asyncio.ensure_future(worker.run("bob", ran.append, "bob"))
        await asyncio.sleep(0.05)
        gate.set()
        return (await asyncio.gather(blocker, long, short))[1]

    assert asyncio.run(scenario()) == "written"
    worker.shutdown()
    assert ran == ["alice step 0", "bob", "alice step 1", "alice step 2"]


def test_an_iteration_that_says_it_finished_takes_no_task_to_end():
    worker = EngineWorker(max_pending=16)
    taken: list[str] = []
    items = iter(["a", "b", "c"])

    def pieces():
        for item in items:
            taken.append(item)
            yield item

    async def scenario():
        steps = worker.steps("alice", pieces(), lambda: taken.append("closed"), finished=lambda: len(taken) == 2)
        return [item async for item in steps]

    assert asyncio.run(scenario()) == ["a", "b"]
    worker.shutdown()
    assert taken == ["a", "b", "closed"]


def test_iterations_count_as_starting_until_their_first_task_runs_or_is_skipped():
    worker = EngineWorker(max_pending=16)
    gate = threading.Event()
    seen: list[int] = []

    def pieces():
        seen.append(worker.starting)
        yield "piece"

    async def drain(deadline=None):
        with contextlib.suppress(DeadlinePassed):
            return [item async for item in worker.steps("alice", pieces(), lambda: None, deadline)]

    async def scenario():
        blocker = asyncio.ensure_future(worker.run("carol", gate.wait))
        await asyncio.sleep(0.05)
        first = asyncio.ensure_future(drain())
        second = asyncio.ensure_future(drain())
        late = asyncio.ensure_future(drain(deadline=time.monotonic()))  # skipped at its turn
        await asyncio.sleep(0.05)
        queued = worker.starting
        gate.set()
        await asyncio.gather(blocker, first, late, second)
        return queued

    assert asyncio.run(scenario()) == 3
    worker.shutdown()
    assert seen == [2, 1]  # each saw those queued behind it
    assert worker.starting == 0  # the skipped one too counts no more


def test_a_task_whose_deadline_passed_is_not_run():
    worker = EngineWorker(max_pending=16)
    ran: list[str] = []

    async def scenario():
        with pytest.raises(DeadlinePassed):
            await worker.call("alice", lambda: ran.append("late"), deadline=time.monotonic() - 1)
        await worker.call("alice", lambda: ran.append("in time"), deadline=time.monotonic() + 60)

    asyncio.run(scenario())
    worker.shutdown()
    assert ran == ["in time"]


@pytest.fixture(scope="module")
def shared_server(tiny_engine, tmp_path_factory):
    running = RunningServer(tiny_engine, tmp_path_factory.mktemp("data"), tokens=TOKENS, max_pending=8)
    yield running
    running.stop()


def test_bobs_writes_succeed_while_alice_holds_many_streams(shared_server):
    with shared_server.client(ALICE) as alice, shared_server.client(BOB) as bob:
        alice.create("a")
        alice.inject("a", "Alice keeps her notes here.")
        bob.create("b")
        streams, refused = [], []
        for i in range(8):  # as many as the whole server admits
            stream = alice.generate("a", f"Story {i}:", **LONG)
            try:
                next(stream)
                streams.append(stream)
            except ClientError as err:
                refused.append(err)
        assert len(streams) == 4  # half of max_pending
        assert {e.code for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert all("max_pending_per_tenant=4" in e.details for e in refused)
        for i in range(3):
            bob.inject("b", f"Bob's note number {i}.")
        assert bob.get("b").entries == 3
        assert bob.ask("b", "What did Bob note?", max_new_tokens=2) is not None
        for stream in streams:
            stream.close()


def test_a_quota_answers_resource_exhausted_naming_the_limit(tiny_engine, tmp_path):
    running = RunningServer(tiny_engine, tmp_path, tokens=TOKENS, quota=TenantQuota(max_memories=1))
    try:
        with running.client(ALICE) as alice, running.client(BOB) as bob:
            alice.create("first")
            with pytest.raises(ClientError) as err:
                alice.create("second")
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_memories_per_tenant=1" in err.value.details
            bob.create("first")
    finally:
        running.stop()


def test_an_import_in_progress_holds_a_place_and_leaves_no_files(tiny_engine, tmp_path):
    running = RunningServer(tiny_engine, tmp_path, tokens=TOKENS, max_pending=2)
    release = threading.Event()

    def held_import():
        yield pb.StateChunk(header=pb.StateHeader(memory_id="held", format=STATE_FORMAT))
        yield pb.StateChunk(log=b"x" * 100_000)
        release.wait(60)

    try:
        with grpc.insecure_channel(running.address) as channel, running.client(ALICE) as alice:
            stub = memagent_pb2_grpc.MemoryServiceStub(channel)
            call = stub.Import.future(held_import(), metadata=[("authorization", f"Bearer {ALICE}")])
            while running.server.worker.pending_by_tenant["alice"] == 0:
                threading.Event().wait(0.02)
            with pytest.raises(ClientError) as err:
                alice.create("other")
            assert "max_pending_per_tenant=1" in err.value.details
            with running.client(BOB) as bob:
                bob.create("b")
            release.set()
            with pytest.raises(grpc.RpcError) as failed:
                call.result(timeout=30)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the bytes were no log
        assert not (tmp_path / "alice").exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bob"]
    finally:
        release.set()
        running.stop()
