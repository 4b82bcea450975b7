"""Many clients writing to several memories at once: nothing lost, each memory's order kept,
and reads running in between see whole writes only."""

from __future__ import annotations

import asyncio

import pytest

from memagent.client import AsyncClient

from .conftest import ALICE

pytestmark = pytest.mark.timeout(120)

CLIENTS, WRITES, MEMORIES = 8, 10, ["c0", "c1", "c2"]


async def _writer(address: str, worker: int) -> list[tuple[str, int, int]]:
    async with AsyncClient(address, ALICE) as client:
        receipts = []
        for n in range(WRITES):
            memory = MEMORIES[(worker + n) % len(MEMORIES)]
            filler = " and more" * 350 if n == 0 else ""  # two chunks: a write of two forward passes
            text = f"client {worker} write {n} says hello{filler}."
            receipt = await client.inject(memory, text, source=f"c{worker}")
            receipts.append((memory, n, receipt.entry_id))
        return receipts


async def _reader(address: str) -> list[int]:
    """The steps of memory c0 seen between generations."""
    async with AsyncClient(address, ALICE) as client:
        steps = []
        for _ in range(5):
            pieces = [p async for p in client.generate("c0", "client", max_new_tokens=4)]
            assert pieces and all(pieces), "a read streams text while writes go on"
            steps.append((await client.get("c0")).step)
        return steps


async def test_many_clients_many_writes(server):
    async with AsyncClient(server.address, ALICE) as client:
        for memory in MEMORIES:
            await client.create(memory)
    results = await asyncio.gather(
        *[_writer(server.address, w) for w in range(CLIENTS)], _reader(server.address), _reader(server.address)
    )
    receipts = [r for result in results[:CLIENTS] for r in result]
    assert len(receipts) == CLIENTS * WRITES
    async with AsyncClient(server.address, ALICE) as client:
        for memory in MEMORIES:
            entries = await client.entries(memory)
            mine = [r for r in receipts if r[0] == memory]
            assert sorted(e.entry_id for e in entries) == sorted(r[2] for r in mine)
            assert [e.entry_id for e in entries] == list(range(1, len(entries) + 1))
            assert [e.step for e in entries] == sorted(e.step for e in entries)
            for worker in range(CLIENTS):  # a client's writes to this memory stay in its order
                order = [int(e.text.split()[3]) for e in entries if e.source == f"c{worker}"]
                assert order == sorted(order)
            if memory == "c0":  # readers saw c0 between whole writes, never in the middle of one
                seen = results[CLIENTS] + results[CLIENTS + 1]
                assert set(seen) <= {0} | {e.step for e in entries}
            info = await client.get(memory)
            assert (info.entries, info.step) == (len(mine), entries[-1].step)


def _step_rows(server) -> tuple[float, float]:
    """(forward passes that decoded one row, all forward passes) from the server's /metrics."""
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics").read().decode()
    values = {}
    for line in body.splitlines():
        if line.startswith("memagent_decode_step_rows_bucket{le=\"1.0\"}") or line.startswith("memagent_decode_step_rows_count"):
            values[line.split()[0]] = float(line.split()[1])
    return values['memagent_decode_step_rows_bucket{le="1.0"}'], values["memagent_decode_step_rows_count"]


async def test_generations_on_different_memories_share_forward_passes(server):
    memories = [f"batched-{i}" for i in range(4)]
    async with AsyncClient(server.address, ALICE) as client:
        for i, memory in enumerate(memories):
            await client.create(memory)
            await client.inject(memory, f"Memory {i} says the rollout is on day {i + 3}.")
        alone = [(await client.complete(m, "The rollout", max_new_tokens=24)).text for m in memories]
        single_before, total_before = _step_rows(server)
        streams = [client.generate(m, "The rollout", max_new_tokens=24) for m in memories]
        firsts = [await anext(aiter(s)) for s in streams]  # every stream is running before any ends
        texts = await asyncio.gather(*[_rest(s) for s in streams])
    single, total = _step_rows(server)
    assert [f + t for f, t in zip(firsts, texts)] == alone  # batched, each answer as alone
    assert total - total_before < 4 * 24 - 4  # fewer forward passes than tokens
    assert total - total_before > single - single_before  # some passes decoded several memories


async def _rest(stream) -> str:
    return "".join([piece async for piece in stream])
