"""The service on models with a long-term memory, M+'s (random:tiny-mplus) and one of whole
writes (random:tiny-writes): the long-term memory is as durable as the pool.

A crash (kill -9 of a server process) and a restart give the same long-term memory, bit for
bit, whether it comes back from the log alone or from a snapshot plus the log's tail; Forget
rebuilds it; Export/Import carry it, and a damaged one is refused with nothing stored lost;
eviction to disk and back keeps it; Get reports its size.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import grpc
import pytest
from memagent_server.process import ServerProcess
from safetensors import safe_open
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

import memagent
from memagent.abstention import ABSTENTION
from memagent.client import Client, ClientError
from memagent.store import MemoryStore, NewText
from memagent.store.memory_store import run_to_end

from .conftest import RunningServer

pytestmark = pytest.mark.timeout(300)

K = 8  # tokens a write adds to the long-term memory per layer; without decay or bound, all are kept
# The writes each model's long-term memory does not get: M+'s first write drops nothing.
UNSTORED = {"random:tiny-mplus": 1, "random:tiny-writes": 0}
NAMES = "Ana Ben Cai Dov Eli Fay Gus Hal Ivo Jon".split()
NOTES = [f"Note {i}: locker {i} holds parcel {i * 7} for {name}." for i, name in enumerate(NAMES)]


@pytest.fixture(scope="module", params=list(UNSTORED))
def model(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(model) -> memagent.Engine:
    return memagent.load(model)


def stored(model: str, step: int) -> int:
    """Long-term tokens per layer after `step` writes."""
    return K * (step - UNSTORED[model])


def pool_state(pool_file: bytes) -> tuple[dict, dict]:
    """A pool file's metadata (the generator's state too) and each tensor's dtype, shape and
    bytes: equal states are equal bit for bit (the file's bytes are not: safetensors writes
    the metadata in an order of its own)."""
    header = json.loads(pool_file[8 : 8 + int.from_bytes(pool_file[:8], "little")])
    tensors = load_tensors(pool_file)
    return header["__metadata__"], {k: (v.dtype, v.shape, v.numpy().tobytes()) for k, v in tensors.items()}


def exported_pool(client: Client, memory: str, folder: Path) -> tuple[dict, dict]:
    """The state of the pool an export of `memory` carries."""
    path = folder / f"{memory}.tar"
    client.export(memory, path)
    with tarfile.open(path) as tar:
        return pool_state(tar.extractfile("pool.safetensors").read())


def test_a_crash_gives_back_the_same_long_term_memory_from_the_log_or_a_snapshot_and_its_tail(model, engine, tmp_path):
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "first.log", "--snapshot-every", "3", model=model)
    with Client(server.address) as client:
        client.create("snapped")
        client.create("logged")
        for text in NOTES:  # snapshots after 3, 6 and 9 texts; a one-text tail
            client.inject("snapped", text)
        for text in NOTES[:2]:  # no snapshot: the log alone
            client.inject("logged", text)
        before = {m: exported_pool(client, m, tmp_path) for m in ("snapped", "logged")}
        sizes = {m: client.get(m).long_term_tokens for m in before}
    server.kill()
    snapshots = list((data / "default" / "snapped").glob("pool-*.safetensors"))
    assert snapshots and not list((data / "default" / "logged").glob("pool-*.safetensors"))
    assert sizes["snapped"] > sizes["logged"] > 0, "both stores hold tokens"

    server = ServerProcess(data, tmp_path / "second.log", "--snapshot-every", "3", model=model)
    try:
        with Client(server.address) as client:
            assert client.get("logged").long_term_tokens is None, "not opened yet, no snapshot of its whole log"
            for memory, pool in before.items():
                assert exported_pool(client, memory, tmp_path) == pool, f"{memory}: not bit for bit"
                assert client.get(memory).long_term_tokens == sizes[memory] > 0
            # A run never interrupted has it too (the snapshot holds the store, the tail adds to it).
            reference = MemoryStore(engine, tmp_path / "reference")
            reference.create("default", "snapped")
            reference.inject("default", "snapped", [NewText(t) for t in NOTES])
            assert pool_state(reference.export("default", "snapped").pool) == before["snapped"]
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    running = RunningServer(engine, tmp_path_factory.mktemp("data"))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with server.client(None) as client:
        yield client


def write(client: Client, memory: str, texts: list[str]) -> list[int]:
    client.create(memory)
    return [client.inject(memory, text).entry_id for text in texts]


def test_forget_rebuilds_the_long_term_memory_as_if_never_told(model, client, tmp_path):
    ids = write(client, "told", NOTES[:6])
    write(client, "never-told", [NOTES[i] for i in (0, 2, 3, 5)])
    result = client.forget("told", [ids[1], ids[4]])
    sizes = result.memory.long_term_tokens, client.get("never-told").long_term_tokens
    assert sizes == (stored(model, result.memory.step),) * 2
    told, never = (exported_pool(client, m, tmp_path) for m in ("told", "never-told"))
    assert told == never


def test_ask_abstains_without_reading_on_a_name_no_write_holds(model, client):
    if model != "random:tiny-writes":
        pytest.skip("only a memory of whole writes tells from its keys what it holds")
    write(client, "names", NOTES[:3])
    answer = client.ask_with_usage("names", "Which locker holds the parcel for Zoltan?")
    assert (answer.text, answer.abstained, answer.usage.completion_tokens) == (ABSTENTION, True, 0)
    assert client.ask_with_usage("names", "Which locker holds the parcel for Ben?").usage.completion_tokens > 0


def test_a_grounded_ask_answers_as_the_engine_grounds_it(model, engine, client):
    write(client, "grounded", NOTES[:3])
    # No write names both, and at this seed the random model, sampled, answers from one ("0 for Ana.Note 0").
    question, sampled = "Which locker holds the parcel for Ben and Ana?", dict(do_sample=True, temperature=1.5, seed=3)
    if model != "random:tiny-writes":
        with pytest.raises(ClientError, match="whole writes") as refused:
            client.ask("grounded", question, grounded=True)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        return
    pool = engine.pool("grounded")
    for text in NOTES[:3]:
        pool.inject(text, progress=False)
    local = pool.ask(question, stop=["zzzz"], **sampled)
    assert local and not engine.grounding(pool.pool, question)(local), "sampled, the random model answers what no write holds"
    answer = client.ask_with_usage("grounded", question, stop=["zzzz"], grounded=True, **sampled)
    assert (answer.text, answer.abstained) == (ABSTENTION, True) and answer.usage.completion_tokens > 0
    assert client.ask("grounded", question, stop=["zzzz"], **sampled) == local


def test_export_and_import_carry_the_long_term_memory(model, client, tmp_path):
    write(client, "original", NOTES[:5])
    path = tmp_path / "original.tar"
    client.export("original", path)
    copy = client.import_memory(path, "copy")
    assert copy.long_term_tokens == client.get("original").long_term_tokens == stored(model, copy.step)
    assert exported_pool(client, "copy", tmp_path) == exported_pool(client, "original", tmp_path)
    client.inject("copy", NOTES[5])
    client.inject("original", NOTES[5])
    assert exported_pool(client, "copy", tmp_path) == exported_pool(client, "original", tmp_path)


def damaged_copy(source: Path, folder: Path, change) -> Path:
    """A copy of the export `source` whose pool's tensors went through `change`."""
    with tarfile.open(source) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    pool = folder / "pool.safetensors"
    pool.write_bytes(members["pool.safetensors"])
    with safe_open(str(pool), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    change(tensors)
    save_file(tensors, pool, metadata)
    members["pool.safetensors"] = pool.read_bytes()
    target = folder / f"damaged-{source.name}"
    with tarfile.open(target, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return target


def _nan_in_a_token(tensors):
    tensors["ltm.1"][2, 5] = float("nan")


def _tokens_cut_short(tensors):
    tensors["ltm.0"] = tensors["ltm.0"][:-1].contiguous()


def _store_dropped(tensors):
    for name in [k for k in tensors if k.startswith("ltm")]:
        del tensors[name]


@pytest.mark.parametrize("change", [_nan_in_a_token, _tokens_cut_short, _store_dropped])
def test_an_import_with_a_damaged_long_term_memory_is_refused_and_nothing_stored_is_lost(
    model, client, tmp_path, change
):
    memory = f"kept-{change.__name__.strip('_').replace('_', '-')}"
    write(client, memory, NOTES[:4])
    path = tmp_path / "kept.tar"
    client.export(memory, path)
    before = exported_pool(client, memory, tmp_path)
    with pytest.raises(ClientError) as err:
        client.import_memory(damaged_copy(path, tmp_path, change), f"{memory}-copy")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "imported pool" in err.value.details and ("long-term" in err.value.details or "ltm" in err.value.details)
    assert f"{memory}-copy" not in [m.memory_id for m in client.list()]
    assert exported_pool(client, memory, tmp_path) == before
    copy = client.import_memory(path, f"{memory}-copy")
    assert copy.long_term_tokens == stored(model, copy.step) > 0, "the sound export still imports"


def test_eviction_to_disk_and_back_keeps_the_long_term_memory(engine, tmp_path):
    """With room for one pool on the device, each use of one memory evicts the other to disk
    (snapshotted or not); reloaded, both equal pools that never left."""
    tight = MemoryStore(engine, tmp_path / "tight", device_bytes=1, snapshot_every=2)
    roomy = MemoryStore(engine, tmp_path / "roomy")
    for store in (tight, roomy):
        for memory in ("a", "b"):
            store.create("t", memory)
    for i, text in enumerate(NOTES[:7]):
        for store in (tight, roomy):
            store.inject("t", "a" if i % 2 else "b", [NewText(text)])
    assert tight.get("t", "a").residency == "disk" and tight.get("t", "b").residency == "device"
    assert tight.get("t", "a").long_term_tokens == roomy.get("t", "a").long_term_tokens > 0
    for memory in ("a", "b"):
        assert pool_state(tight.export("t", memory).pool) == pool_state(roomy.export("t", memory).pool)


def test_a_memory_evicted_during_a_write_reports_no_size_until_it_is_opened_again(model, engine, tmp_path):
    store = MemoryStore(engine, tmp_path, device_bytes=1, snapshot_every=10_000, replay_seconds=float("inf"))
    store.create("t", "m")
    store.create("t", "other")
    store.inject("t", "m", [NewText(NOTES[0])])
    steps = store.inject_steps("t", "m", [NewText(t) for t in NOTES[1:4]])
    next(steps)  # logged, one chunk applied
    store.inject("t", "other", [NewText(NOTES[9])])  # room for one pool only: m goes to disk
    assert store.get("t", "m").residency == "disk"
    assert store.get("t", "m").long_term_tokens is None, "the pool it left lagged its log"
    run_to_end(steps)  # the rest of the write waits in the log for the memory's next use
    assert store.get("t", "m").long_term_tokens is None
    store.export("t", "m")  # opened: replayed from the log
    info = store.get("t", "m")
    assert info.long_term_tokens == stored(model, info.step)


def test_serve_bounds_the_long_term_memory_and_get_reports_its_size(model, tmp_path):
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", "--max-long-term-tokens", "16", model=model)
    try:
        with Client(server.address) as client:
            client.create("m")
            assert client.get("m").long_term_tokens == 0
            for text in NOTES[:4]:
                client.inject("m", text)
                info = client.get("m")
                assert info.long_term_tokens == min(16, stored(model, info.step))
            assert info.long_term_tokens == 16
    finally:
        assert server.stop() == 0


def test_serve_refuses_a_bound_below_what_a_read_places(model, tmp_path):
    with pytest.raises(RuntimeError, match="at least the 16 long-term tokens a read places"):
        ServerProcess(tmp_path / "data", tmp_path / "serve.log", "--max-long-term-tokens", "8", model=model)
