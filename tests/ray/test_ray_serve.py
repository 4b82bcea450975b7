"""The memory service on a real local Ray cluster, started by `memagent serve --ray`: 2 replicas
on the CPU, the tiny model, the real gRPC API through Serve's proxy. Skipped without ray
(`pip install 'memagent[ray]'`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytest.importorskip("ray.serve")

from memagent_server import ray_app  # noqa: E402

from memagent.client import Client, ClientError  # noqa: E402
from memagent.store import MemoryStore  # noqa: E402
from memagent.store.lease import read_lease  # noqa: E402
from memagent.v1 import memagent_pb2 as pb  # noqa: E402
from memagent.v1 import memagent_pb2_grpc  # noqa: E402

pytestmark = pytest.mark.ray

TOKENS = {"token-of-alice-0123456789": "alice", "token-of-bob-0123456789ab": "bob"}
ALICE, BOB = list(TOKENS)


class Cluster:
    """`memagent serve --ray` in a subprocess, as the README runs it."""

    def __init__(self, root: Path):
        self.data_dir = root / "data"
        self.acked: dict[tuple[str, str], int] = {}  # (memory, text) -> entry id of every acknowledged write
        self.log = root / "serve.log"
        tokens = root / "tokens.json"
        tokens.write_text(json.dumps({"tokens": TOKENS}))
        # A free port can be taken by one of Ray's own processes before the proxy binds it.
        for _ in range(3):
            if self._start(tokens):
                return
            self.process.terminate()
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        raise AssertionError(self.log.read_text()[-3000:])

    def _start(self, tokens: Path) -> bool:
        """Whether the cluster came up; False if its gRPC proxy could not bind the port."""
        self.port = ray_app._free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_port = ray_app._free_port()  # where Ray's metrics agent exports, ours included
        command = [
            *("serve", "--ray", "--replicas", "2", "--data-dir", str(self.data_dir), "--port", str(self.port)),
            *("--model", "random:tiny", "--tokens", str(tokens), "--snapshot-every", "4"),
            *("--quantize", "int8"),  # replicas read through int8 weights; writes stay the float model's
            *("--resident", "32"),  # no replica evicts, so routing alone decides where memories are
            *("--metrics-port", str(self.metrics_port)),
        ]
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # no token file under the home folder
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import sys; from memagent.cli import main; sys.exit(main())", *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + 300
        while b"serving on Ray" not in (output := self.log.read_bytes()):
            if b"Failed to bind to address" in output:
                return False
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.5)
        return True

    def client(self, token: str | None = ALICE) -> Client:
        return Client(self.address, token, timeout=60)

    def lease(self, memory: str, tenant: str = "alice") -> dict:
        return read_lease(self.data_dir / tenant / memory)

    def write(self, client: Client, memory: str, text: str) -> None:
        self.acked[(memory, text)] = client.inject(memory, text).entry_id

    def metric(self, name: str, **labels: str) -> float:
        """The sum over replicas of a metric's samples with these labels, as Prometheus scrapes it."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            assert self.process.wait(120) == 0, self.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = Cluster(tmp_path_factory.mktemp("ray"))
    yield running
    running.stop()


def _entries(client: Client, memory: str) -> dict[str, int]:
    entries = client.entries(memory)
    assert len({e.entry_id for e in entries}) == len(entries)
    return {e.text: e.entry_id for e in entries}


def test_the_client_works_unchanged_through_serve(cluster):
    with cluster.client(ALICE) as alice, cluster.client(BOB) as bob, cluster.client(None) as anonymous:
        alice.create("notes")
        cluster.write(alice, "notes", "Ann's dog is named Rex.")
        receipts = alice.inject_many("notes", ["The meeting moved to Tuesday.", "Ben likes teal."])
        assert [r.entry_id for r in receipts] == [2, 3]
        assert alice.get("notes").entries == 3
        assert alice.ask("notes", "What is the dog called?", max_new_tokens=4) is not None
        assert "".join(alice.generate("notes", "Ann", max_new_tokens=3))
        assert [m.memory_id for m in alice.list()] == ["notes"]
        # Tenants stay apart, and errors keep their status codes through the proxy.
        assert bob.list() == []
        for call, code in [
            (lambda: bob.get("notes"), grpc.StatusCode.NOT_FOUND),
            (lambda: alice.create("notes"), grpc.StatusCode.ALREADY_EXISTS),
            (lambda: alice.inject("notes", " "), grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: anonymous.list(), grpc.StatusCode.UNAUTHENTICATED),
        ]:
            with pytest.raises(ClientError) as err:
                call()
            assert err.value.code == code
        assert alice.forget("notes", [2]).memory.entries == 2
        assert list(_entries(alice, "notes")) == ["Ann's dog is named Rex.", "Ben likes teal."]
        alice.export("notes", cluster.data_dir.parent / "notes.memagent")
        assert alice.import_memory(cluster.data_dir.parent / "notes.memagent", "copy").entries == 2
        alice.delete("copy")
        cluster.acked[("notes", "Ben likes teal.")] = 3


def test_our_metrics_are_exported_where_ray_exports_serves(cluster):
    not_found = {"method": "Delete", "code": "NOT_FOUND"}  # no other test makes such a call
    written = cluster.metric("ray_memagent_tokens_written_total")
    with cluster.client() as alice:
        alice.create("counted")
        alice.inject("counted", "Counted words are written.")
        for _ in range(3):
            with pytest.raises(ClientError):
                alice.delete("missing")
    # Ray's metrics agent collects from the replicas every few seconds, counters and gauges
    # not necessarily in the same collection.
    def collected() -> bool:
        resident = cluster.metric("ray_memagent_memories_resident", tier="device")
        return cluster.metric("ray_memagent_requests_total", **not_found) >= 3 and resident >= 1

    deadline = time.monotonic() + 60
    while not collected() and time.monotonic() < deadline:
        time.sleep(1)
    assert cluster.metric("ray_memagent_requests_total", **not_found) == 3
    assert cluster.metric("ray_memagent_requests_total", method="Inject", code="OK") >= 1
    assert cluster.metric("ray_memagent_request_seconds_count", method="Create") >= 1
    assert cluster.metric("ray_memagent_tokens_written_total") > written
    assert cluster.metric("ray_memagent_memories_resident", tier="device") >= 1
    # Tagged by replica as Serve tags its own metrics, which are on the same endpoint.
    assert cluster.metric("ray_memagent_requests_total", deployment="MemoryService", **not_found) == 3
    assert cluster.metric("ray_serve_deployment_request_counter_total", deployment="MemoryService") > 0


def test_memories_spread_over_both_replicas_and_every_call_finds_its_own(cluster):
    names = [f"user-{i:02d}" for i in range(16)]
    with cluster.client() as alice:
        for name in names:
            alice.create(name)
            # Serve routes a new memory to the replica holding the fewest, as its proxy last
            # heard from the replicas: creates faster than that news would all go to one.
            time.sleep(0.5)
        for round in range(3):
            for name in names:
                cluster.write(alice, name, f"{name} round {round}.")
                alice.ask(name, "Who was here?", max_new_tokens=2)
        for name in names:
            assert _entries(alice, name) == {f"{name} round {r}.": r + 1 for r in range(3)}
    # Routing is best-effort (README "Scaling out"): where each memory ended up, not how often it moved.
    owners = {cluster.lease(name)["owner"].split("@")[0] for name in names}
    assert len(owners) == 2


def test_a_memory_stays_on_one_replica_once_routing_settles(cluster):
    names = [f"sticky-{i}" for i in range(8)]
    with cluster.client() as alice:
        for name in names:
            alice.create(name)
            cluster.write(alice, name, f"{name} was here.")
        # A memory served by both replicas while Serve learnt where it is leaves the routing of
        # the replica that lost it at that replica's next sweep.
        time.sleep(5 * ray_app.UNROUTE_EVERY_S)
        settled = {name: cluster.lease(name) for name in names}
        for round in range(3):
            for name in names:
                cluster.write(alice, name, f"{name} round {round}.")
                alice.ask(name, "Who was here?", max_new_tokens=2)
    assert {name: cluster.lease(name) for name in names} == settled  # no lease changed hands


def test_two_replicas_forced_onto_one_memory_keep_one_writer(cluster):
    """Calls without a routing id go to either replica: the memory moves back and forth."""
    with cluster.client() as alice:
        alice.create("contended")
    acked, aborted = {}, []

    def writer(n: int) -> None:
        with grpc.insecure_channel(cluster.address) as channel:
            stub = memagent_pb2_grpc.MemoryServiceStub(channel)
            metadata = (("authorization", f"Bearer {ALICE}"),)  # and no multiplexed_model_id
            for i in range(8):
                text = f"Writer {n} note {i}."
                request = pb.InjectRequest(memory_id="contended", texts=[pb.Text(text=text)])
                try:
                    acked[text] = stub.Inject(request, metadata=metadata, timeout=60).receipts[0].entry_id
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.ABORTED, err  # lost the lease mid-call: nothing written
                    aborted.append(text)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cluster.lease("contended")["epoch"] > 2  # both replicas really held it, more than once
    with cluster.client() as alice:
        entries = alice.entries("contended")
        # Every acknowledged write, once, with its id; nothing refused; steps without a gap.
        assert {e.text: e.entry_id for e in entries} == acked
        assert len(acked) + len(aborted) == 32
        assert [e.step for e in entries] == list(range(1, len(entries) + 1))
        served = alice.get("contended")
    assert served.entries == len(acked)
    cluster.acked.update({("contended", text): entry_id for text, entry_id in acked.items()})


def test_a_killed_replica_loses_no_acknowledged_write(cluster):
    memories = [f"load-{i}" for i in range(4)]
    with cluster.client() as alice:
        for name in memories:
            alice.create(name)
    killed = threading.Event()
    after_kill = {name: 0 for name in memories}
    failures = []

    def writer(name: str) -> None:
        with cluster.client() as client:
            deadline = time.monotonic() + 240
            i = 0
            while (not killed.is_set() or after_kill[name] < 4) and time.monotonic() < deadline:
                i += 1
                try:
                    cluster.write(client, name, f"{name} write {i}.")  # a new text each try: no retried duplicates
                except ClientError as err:
                    failures.append(err.code)
                    time.sleep(0.2)
                    continue
                if killed.is_set():
                    after_kill[name] += 1

    threads = [threading.Thread(target=writer, args=(name,)) for name in memories]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while sum(1 for (m, _) in cluster.acked if m in memories) < 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    victim = cluster.lease(memories[0])["owner"]
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
    killed.set()
    for thread in threads:
        thread.join()
    assert all(n >= 4 for n in after_kill.values()), (after_kill, failures)
    assert set(failures) <= {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
    # The victim's memories are served by another replica now, with every acknowledged write.
    assert cluster.lease(memories[0])["owner"] != victim
    with cluster.client() as alice:
        for name in memories:
            served = _entries(alice, name)
            assert {t: served.get(t) for (m, t) in cluster.acked if m == name} == {
                t: e for (m, t), e in cluster.acked.items() if m == name
            }


def test_every_acknowledged_write_is_on_storage_after_shutdown(cluster, tiny_engine):
    cluster.stop()
    store = MemoryStore(tiny_engine, cluster.data_dir)  # a single server on the same files
    memories = {m for m, _ in cluster.acked}
    for memory in memories:
        on_disk = {e.text: e.entry_id for e in store.entries("alice", memory)}
        for (m, text), entry_id in cluster.acked.items():
            if m == memory:
                assert on_disk[text] == entry_id
    assert store.list("bob") == []


def test_the_documented_serve_config_is_valid_and_builds(tmp_path):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    path = Path(ray_app.__file__).with_name("ray_serve.yaml")
    config = ServeDeploySchema(**yaml.safe_load(path.read_text()))
    (application,) = config.applications
    assert config.grpc_options.grpc_servicer_functions == ray_app.SERVICER_FUNCTIONS
    assert application.route_prefix == ray_app.ROUTE_PREFIX
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tokens": {"token-of-alice-0123456789": "alice"}}')
    built = ray_app.app({**application.args, "data_dir": str(tmp_path), "tokens_file": str(tokens)})
    assert built._bound_deployment.num_replicas == application.args["replicas"]
