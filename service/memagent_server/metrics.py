"""Prometheus metrics, served over HTTP on their own port (loopback unless told otherwise), and
one structured log line per call, naming the tenant (never the token)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from memagent_server.auth import tenant_for_logs
from memagent_server.handler_wrapping import wrap

log = logging.getLogger("memagent_server.rpc")


class PrometheusInstruments:
    """Makes each metric with prometheus-client, on one registry (what `Metrics.serve` exposes)."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)


class Metrics:
    """Every `memagent_*` metric, made by `instruments` (prometheus-client by default; the Ray
    replica passes Ray's, `ray_app.RayInstruments`). Callers use prometheus-client's calls:
    `labels(...)`, `inc`, `observe`, `set_function`."""

    def __init__(self, instruments=None) -> None:
        self.registry = CollectorRegistry()
        make = instruments or PrometheusInstruments(self.registry)
        self.requests = make.counter("memagent_requests", "RPCs finished", ["method", "code"])
        self.latency = make.histogram(
            "memagent_request_seconds",
            "RPC latency",
            ["method"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.decode_rows = make.histogram(
            "memagent_decode_step_rows",
            "Rows decoded per forward pass, over every memory (continuous batching)",
            [],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.tokens_written = make.counter("memagent_tokens_written", "Tokens written into memories")
        self.tokens_generated = make.counter("memagent_tokens_generated", "Tokens generated")
        self.resident = make.gauge("memagent_memories_resident", "Open memories by where their pool is", ["tier"])
        self.queue = make.gauge("memagent_queue_depth", "Requests admitted and not finished")
        self.in_progress = make.gauge("memagent_calls_in_progress", "MemoryService calls not finished")
        self.calls = 0  # calls `observed` and not finished (the in-progress gauge)
        self.http_address: tuple | None = None  # where /metrics listens, once serving

    def watch(self, resident: Callable[[], dict[str, int]], queue_depth: Callable[[], int]) -> None:
        """Read gauges from live state at scrape time."""
        for tier in ("device", "host"):
            self.resident.labels(tier=tier).set_function(lambda tier=tier: resident().get(tier, 0))
        self.queue.set_function(queue_depth)
        self.in_progress.set_function(lambda: self.calls)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint (/metrics); returns its port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.http_address = server.server_address
        return server.server_port


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        return wrap(handler, lambda context: observed(self.metrics, method, context))


@contextlib.asynccontextmanager
async def observed(metrics: Metrics, method: str, context):
    """Count one call, time it and log it; `context` is a gRPC servicer context (or Serve's)."""
    start = time.perf_counter()
    # Read now: after a cancellation the call's transport (which owns the peer) may be gone,
    # and grpc_call_get_peer on it is a use-after-free.
    peer = context.peer()
    code = grpc.StatusCode.OK
    metrics.calls += 1  # on the event loop: no lock needed
    try:
        yield
    except grpc.aio.AbortError:
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        code = grpc.StatusCode.UNKNOWN
        raise
    finally:
        metrics.calls -= 1
        seconds = time.perf_counter() - start
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        metrics.requests.labels(method=method, code=name).inc()
        metrics.latency.labels(method=method).observe(seconds)
        log.info(
            "rpc",
            extra={
                "method": method,
                "code": name,
                "ms": round(seconds * 1000, 2),
                "peer": peer,
                "tenant": tenant_for_logs(),
            },
        )
