"""MemoryService on Ray Serve: memories multiplexed over replicas that share their storage.

Each replica is one engine and one `MemoryStore(shared=True)` on the common data directory,
behind the very servicer the single server runs (`servicer.py`). Serve's gRPC proxy routes a
call by its `multiplexed_model_id` metadata (the memory id; the Python client always sends it)
to a replica that has that memory resident; a replica keeps at most `resident` pools (least
recently used go to storage). Routing is best-effort, so each memory's lease
(`memagent/store/lease.py`) keeps one writer per memory and no replica serves a stale pool.

Run it with `memagent serve --ray --replicas N --data-dir PATH`, or on a cluster with
`serve run service/memagent_server/ray_serve.yaml` (see README "Scaling out").
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import grpc
import ray
from ray import serve
from ray.util import metrics as ray_metrics
from ray.serve.config import gRPCOptions

import memagent
from memagent.store import MemoryStore
from memagent.store.lease import default_owner
from memagent.v1 import memagent_pb2 as pb
from memagent_server.auth import DEFAULT_TENANT, act_as, load_tokens, tenant_of
from memagent_server.limits import Limits
from memagent_server.metrics import Metrics, observed
from memagent_server.servicer import MemoryServicer
from memagent_server.worker import SERVER, EngineWorker

log = logging.getLogger("memagent_server")

APP_NAME = "memagent"
ROUTE_PREFIX = "/memagent"  # the gRPC proxy never finds an application without one
SERVICER_FUNCTIONS = ["memagent.v1.memagent_pb2_grpc.add_MemoryServiceServicer_to_server"]
METHODS = pb.DESCRIPTOR.services_by_name["MemoryService"].methods
UNROUTE_EVERY_S = 1.0
GAUGES_EVERY_S = 1.0  # Ray exports every few seconds; gauges are read from live state this often
# A memory that changes replica is reloaded from storage, so the router should wait for the
# replica that holds it rather than try another after Serve's default 0.1 s queue probe. Read by
# Serve's proxies: set in the environment of whatever starts the cluster (`ray start` on clusters).
STICKY_ROUTING = {
    "RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "1",
    "RAY_SERVE_MAX_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "5",
}


@dataclass
class RayConfig:
    data_dir: str  # shared by every replica
    model: str | None = None  # as for `memagent.load`; None: the embedded default
    device: str = "cpu"
    replicas: int = 2
    resident: int = 8  # pools one replica keeps loaded
    tokens: dict[str, str] | None = None  # bearer token -> tenant; None: no authentication
    snapshot_every: int = 64
    max_long_term_tokens: int | None = None  # as for `memagent.load`
    quantize: str | None = None  # as for `memagent.load`: "int8" reads through int8 weights (CPU)
    compile_decode: bool = False  # as for `memagent.load`
    max_pending: int = 256
    max_pending_per_tenant: int | None = None  # None: half of max_pending
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    limits: Limits = field(default_factory=Limits)


class _CallContext:
    """What the servicer asks of a gRPC context, on Ray Serve's: a status set on it reaches the caller."""

    def __init__(self, grpc_context):
        self._context = grpc_context

    async def abort(self, code: grpc.StatusCode, details: str):
        self._context.set_code(code)
        self._context.set_details(details)
        raise grpc.aio.AbortError(details)

    def time_remaining(self) -> float | None:
        return None  # Serve does not pass the caller's deadline on


class _RayMetric:
    """A Ray metric (or one set of its tags) answering prometheus-client's calls, as `Metrics`
    callers make them."""

    def __init__(self, metric: ray_metrics.Metric, watched: list, tags: dict[str, str] | None = None):
        self.metric, self.watched, self.tags = metric, watched, tags

    def labels(self, **tags: str) -> _RayMetric:
        return _RayMetric(self.metric, self.watched, tags)

    def inc(self, amount: float = 1.0) -> None:
        if amount:  # Ray refuses an increment of 0, which prometheus-client takes
            self.metric.inc(amount, tags=self.tags)

    def observe(self, value: float) -> None:
        self.metric.observe(value, tags=self.tags)

    def set(self, value: float) -> None:
        self.metric.set(value, tags=self.tags)

    def set_function(self, read) -> None:
        self.watched.append((self, read))  # Ray has no read-at-export gauge: `refresh` sets it


class RayInstruments:
    """Makes each metric with Ray's metrics API, tagged with its replica as Serve tags its own.
    Ray's metrics agent on each node exports them (named `ray_memagent_*`) on the node's metrics
    export port, next to Serve's."""

    def __init__(self, tags: dict[str, str]):
        self.tags = tags
        self.watched: list[tuple[_RayMetric, Any]] = []

    def _made(self, metric: ray_metrics.Metric) -> _RayMetric:
        metric.set_default_tags(self.tags)
        return _RayMetric(metric, self.watched)

    def counter(self, name: str, doc: str, labels=()) -> _RayMetric:
        return self._made(ray_metrics.Counter(name, doc, tag_keys=(*labels, *self.tags)))

    def gauge(self, name: str, doc: str, labels=()) -> _RayMetric:
        return self._made(ray_metrics.Gauge(name, doc, tag_keys=(*labels, *self.tags)))

    def histogram(self, name: str, doc: str, labels, buckets) -> _RayMetric:
        return self._made(ray_metrics.Histogram(name, doc, boundaries=list(buckets), tag_keys=(*labels, *self.tags)))

    def refresh(self) -> None:
        """Set every watched gauge from live state."""
        for gauge, read in self.watched:
            gauge.set(read())


class MemoryReplica:
    """One replica: an engine, a store on the shared data directory, the servicer."""

    def __init__(self, config: RayConfig):
        engine = memagent.load(
            config.model,
            device=config.device,
            max_long_term_tokens=config.max_long_term_tokens,
            quantize=config.quantize,
            compile_decode=config.compile_decode,
        )
        engine.prepare_decode()
        context = serve.get_replica_context()
        self.store = MemoryStore(
            engine,
            config.data_dir,
            shared=True,
            owner=f"{context.replica_id.unique_id}@{default_owner()}",
            snapshot_every=config.snapshot_every,
            device_bytes=config.resident * engine.model.pool.memory.nbytes,
        )
        self.worker = EngineWorker(config.max_pending, config.max_pending_per_tenant)
        self.instruments = RayInstruments(
            {"application": context.app_name, "deployment": context.deployment, "replica": context.replica_id.unique_id}
        )
        self.metrics = Metrics(self.instruments)
        self.metrics.watch(self.store.resident, lambda: self.worker.pending)
        engine.batch.on_step = self.metrics.decode_rows.observe
        self.servicer = MemoryServicer(self.store, self.worker, config.limits, self.metrics)
        self.tokens = config.tokens

        async def routed(memory_id: str) -> str:
            # Tells Serve this replica holds the memory, for routing; the store loads it on use.
            return memory_id

        self._routing = routed  # Serve keeps the replica's routing table on the function it wraps
        self._routed = serve.multiplexed(max_num_models_per_replica=config.resident)(routed)
        self._background: list[asyncio.Task] = []

    async def _begin(self, grpc_context) -> _CallContext:
        """Authenticate the call and record its memory for routing; the servicer does the rest."""
        context = _CallContext(grpc_context)
        tenant = DEFAULT_TENANT if self.tokens is None else tenant_of(self.tokens, grpc_context.invocation_metadata())
        if tenant is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid token: send metadata 'authorization: Bearer <token>'",
            )
        act_as(tenant)
        if memory_id := serve.get_multiplexed_model_id():
            await self._routed(memory_id)
        if not self._background:  # Serve's event loop runs calls; its tasks start at the first
            loop = asyncio.get_running_loop()
            self._background = [loop.create_task(self._unroute_moved()), loop.create_task(self._refresh_gauges())]
        return context

    async def _refresh_gauges(self) -> None:
        while True:
            self.instruments.refresh()
            await asyncio.sleep(GAUGES_EVERY_S)

    async def _unroute_moved(self) -> None:
        """Stop attracting calls for memories another replica took over. Serve keeps routing a
        memory to every replica that ever served it, and each call that lands on the one without
        the lease moves the lease (and the pool) back: without this, a memory that two replicas
        served once would move at every other call."""
        while True:
            await asyncio.sleep(UNROUTE_EVERY_S)
            table = getattr(self._routing, "__serve_multiplex_wrapper", None)  # Serve's own (private)
            if table is None:
                continue
            held = await self.worker.run(SERVER, self.store.held)
            moved = [memory_id for memory_id in table.models if memory_id not in held]
            for memory_id in moved:  # no await in between: no other call sees a half-done table
                del table.models[memory_id]
            if moved:
                table._push_multiplexed_replica_info = True  # Serve pushes the table at its next tick


def _rpc(name: str, streams_responses: bool):
    """A replica method for one RPC: the servicer's method of that name, after `_begin`."""
    if streams_responses:

        async def method(self, request, grpc_context):
            async with observed(self.metrics, name, grpc_context):
                context = await self._begin(grpc_context)
                async for response in getattr(self.servicer, name)(request, context):
                    yield response

    else:

        async def method(self, request, grpc_context):
            async with observed(self.metrics, name, grpc_context):
                context = await self._begin(grpc_context)
                return await getattr(self.servicer, name)(request, context)

    method.__name__ = method.__qualname__ = name
    return method


for _method in METHODS:
    setattr(MemoryReplica, _method.name, _rpc(_method.name, _method.server_streaming))


def build(config: RayConfig) -> serve.Application:
    deployment = serve.deployment(
        MemoryReplica,
        name="MemoryService",
        num_replicas=config.replicas,
        max_ongoing_requests=64,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica},
    )
    return deployment.bind(config)


def app(args: dict[str, Any]) -> serve.Application:
    """The application builder for `serve run` (args from the config file's `args:`).

    `tokens_file` names a tokens JSON file; `no_auth: true` turns authentication off; without
    either, DATA_DIR/tokens.json must exist (`memagent serve` creates one).
    """
    args = dict(args)
    tokens_file = args.pop("tokens_file", None)
    no_auth = args.pop("no_auth", False)
    tokens = None if no_auth else load_tokens(tokens_file or os.path.join(args["data_dir"], "tokens.json"))
    return build(RayConfig(**args, tokens=tokens))


def start(config: RayConfig, port: int, address: str | None = None, metrics_port: int | None = None) -> None:
    """Connect to a Ray cluster (`address`) or start a local one, then deploy on it with the
    gRPC proxy on `port` (every interface: Serve does not bind one address). A local cluster
    exports metrics on `metrics_port` (None: a port Ray picks); a cluster's nodes, on the port
    `ray start --metrics-export-port` gave them."""
    for name, value in STICKY_ROUTING.items():
        os.environ.setdefault(name, value)
    if not ray.is_initialized():  # else the caller connected with its own options
        local = {"include_dashboard": False, "object_store_memory": 256 << 20, "_metrics_export_port": metrics_port}
        ray.init(address=address) if address else ray.init(**local)
    serve.start(
        http_options={"host": "127.0.0.1", "port": _free_port()},  # unused: calls come over gRPC
        grpc_options=gRPCOptions(port=port, grpc_servicer_functions=SERVICER_FUNCTIONS),
    )
    serve.run(build(config), name=APP_NAME, route_prefix=ROUTE_PREFIX)


def metrics_endpoints() -> list[str]:
    """Where the cluster's nodes export metrics (Serve's and ours), as Prometheus scrapes them."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    return [f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics" for node in nodes]


def stop() -> None:
    serve.shutdown()
    ray.shutdown()


def run_until_signalled(
    config: RayConfig, port: int, address: str | None = None, metrics_port: int | None = None
) -> None:
    start(config, port, address=address, metrics_port=metrics_port)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after start: Ray's own handlers would abort the process
        signal.signal(sig, lambda *_: stopping.set())
    log.info(
        "serving on Ray",
        extra={
            "port": port,
            "replicas": config.replicas,
            "resident": config.resident,
            "data_dir": config.data_dir,
            "metrics": metrics_endpoints(),
        },
    )
    stopping.wait()
    log.info("shutting down")
    stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
