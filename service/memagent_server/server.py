"""The server: gRPC (MemoryService, health, reflection) on one port, metrics on another
(loopback unless told otherwise), tokens reloaded on SIGHUP.

Shutdown on SIGTERM/SIGINT: health turns NOT_SERVING at once and stays visible, because the
listener stays open while calls in progress finish (new MemoryService calls get UNAVAILABLE),
for at most the grace period; then every pool is snapshotted. A second signal exits at once:
every acknowledged write is already in its log, so nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from memagent.store import MemoryStore
from memagent.v1 import memagent_pb2, memagent_pb2_grpc
from memagent_server.auth import SERVICE_PREFIX, AuthInterceptor, load_tokens
from memagent_server.handler_wrapping import wrap
from memagent_server.limits import Limits
from memagent_server.metrics import Metrics, MetricsInterceptor
from memagent_server.servicer import MemoryServicer
from memagent_server.worker import SERVER, EngineWorker

log = logging.getLogger("memagent_server")

SERVICE_NAME = memagent_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name
MAX_MESSAGE_BYTES = 64 << 20


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    tokens: dict[str, str] | None = None  # bearer token -> tenant; None: no authentication
    tokens_file: Path | None = None  # where `tokens` came from: reloaded on SIGHUP
    insecure_no_auth_on_public_address: bool = False  # else no auth is refused off loopback
    metrics_port: int | None = None  # None: no metrics endpoint
    metrics_host: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_pending: int = 256
    max_pending_per_tenant: int | None = None  # None: half of max_pending
    grace_s: float = 30.0
    limits: Limits = field(default_factory=Limits)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class ShutdownGate(grpc.aio.ServerInterceptor):
    """Counts MemoryService calls in progress and, once draining, refuses new ones."""

    def __init__(self) -> None:
        self.draining = False
        self.active = 0
        self.idle = asyncio.Event()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        return wrap(handler, self._tracked)

    @contextlib.asynccontextmanager
    async def _tracked(self, context: grpc.aio.ServicerContext):
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry later")
        self.active += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()


class Server:
    def __init__(self, store: MemoryStore, config: ServerConfig):
        if config.tokens is None and not is_loopback(config.host) and not config.insecure_no_auth_on_public_address:
            raise ValueError(
                f"refusing to serve without authentication on {config.host}, which is not a loopback address: "
                "use tokens, or say --insecure-no-auth-on-public-address"
            )
        self.store = store
        self.config = config
        self.metrics = Metrics()
        self.worker = EngineWorker(config.max_pending, config.max_pending_per_tenant)
        self.gate = ShutdownGate()
        self.metrics.watch(store.resident, lambda: self.worker.pending)
        store.engine.batch.on_step = self.metrics.decode_rows.observe
        self.servicer = MemoryServicer(store, self.worker, config.limits, self.metrics)
        self.port = 0
        self.metrics_port: int | None = None

    def _build(self) -> None:
        """The gRPC server and health servicer belong to the running event loop: made in start()."""
        self.health = health_aio.HealthServicer()
        self.auth = AuthInterceptor(self.config.tokens)
        self.grpc = grpc.aio.server(
            interceptors=[MetricsInterceptor(self.metrics), self.auth, self.gate],
            options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
        )
        memagent_pb2_grpc.add_MemoryServiceServicer_to_server(self.servicer, self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
        reflection.enable_server_reflection(names, self.grpc)

    async def start(self) -> None:
        self._build()
        address = f"{self.config.host}:{self.config.port}"
        if self.config.tls_cert:
            credentials = grpc.ssl_server_credentials(
                [(Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())]
            )
            self.port = self.grpc.add_secure_port(address, credentials)
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.config.metrics_host, self.config.metrics_port)
        await self.grpc.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "address": f"{self.config.host}:{self.port}",
                "metrics": f"{self.config.metrics_host}:{self.metrics_port}" if self.metrics_port else None,
                "model": self.store.engine.name,
                "data_dir": str(self.store.root),
                "auth": self.config.tokens is not None,
                "tls": bool(self.config.tls_cert),
            },
        )

    async def stop(self) -> None:
        """NOT_SERVING first; let calls in progress finish (grace period) with the listener still
        open; then close it and snapshot every pool."""
        await self.health.enter_graceful_shutdown()
        self.gate.draining = True
        if self.gate.active:
            log.info("draining", extra={"calls": self.gate.active, "grace_s": self.config.grace_s})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.gate.idle.wait(), self.config.grace_s)
        await self.grpc.stop(0)
        await self.worker.run(SERVER, self.store.close)
        self.worker.shutdown()
        log.info("stopped")

    def reload_tokens(self) -> None:
        """Read the tokens file again (SIGHUP); a bad file keeps the tokens in use."""
        if self.config.tokens_file is None:
            log.warning("SIGHUP ignored: no tokens file to reload")
            return
        try:
            self.auth.tokens = load_tokens(self.config.tokens_file)
        except ValueError as err:
            log.error("tokens not reloaded; the old ones stay in use", extra={"error": str(err)})
            return
        log.info("tokens reloaded", extra={"tenants": len(set(self.auth.tokens.values()))})

    async def run_until_signalled(self) -> None:
        await self.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()

        def signalled() -> None:
            if stopping.is_set():
                log.warning("second signal: exiting now")
                os._exit(1)  # every acknowledged write is in its log already
            stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, signalled)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tokens)
        await stopping.wait()
        log.info("shutting down")
        await self.stop()
