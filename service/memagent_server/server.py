"""The server: gRPC (MemoryService, health, reflection) on one port, metrics on another,
graceful shutdown on SIGTERM/SIGINT (stop accepting, drain, snapshot)."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from memagent.store import MemoryStore
from memagent.v1 import memagent_pb2, memagent_pb2_grpc
from memagent_server.auth import AuthInterceptor
from memagent_server.limits import Limits
from memagent_server.metrics import Metrics, MetricsInterceptor
from memagent_server.servicer import MemoryServicer
from memagent_server.worker import EngineWorker

log = logging.getLogger("memagent_server")

SERVICE_NAME = memagent_pb2.DESCRIPTOR.services_by_name["MemoryService"].full_name
MAX_MESSAGE_BYTES = 64 << 20


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    tokens: dict[str, str] | None = None  # bearer token -> tenant; None: no authentication
    metrics_port: int | None = None  # None: no metrics endpoint
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_pending: int = 256
    grace_s: float = 30.0
    limits: Limits = field(default_factory=Limits)


class Server:
    def __init__(self, store: MemoryStore, config: ServerConfig):
        self.store = store
        self.config = config
        self.metrics = Metrics()
        self.worker = EngineWorker(config.max_pending)
        self.metrics.watch(store.resident, lambda: self.worker.pending)
        self.servicer = MemoryServicer(store, self.worker, config.limits, self.metrics)
        self.port = 0
        self.metrics_port: int | None = None

    def _build(self) -> None:
        """The gRPC server and health servicer belong to the running event loop: made in start()."""
        self.health = health_aio.HealthServicer()
        self.grpc = grpc.aio.server(
            interceptors=[MetricsInterceptor(self.metrics), AuthInterceptor(self.config.tokens)],
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
            self.metrics_port = self.metrics.serve(self.config.host, self.config.metrics_port)
        await self.grpc.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "address": f"{self.config.host}:{self.port}",
                "metrics_port": self.metrics_port,
                "model": self.store.engine.name,
                "data_dir": str(self.store.root),
                "auth": self.config.tokens is not None,
                "tls": bool(self.config.tls_cert),
            },
        )

    async def stop(self) -> None:
        """Stop taking calls, let those in progress finish, snapshot every pool."""
        await self.health.enter_graceful_shutdown()
        await self.grpc.stop(self.config.grace_s)
        await self.worker.run(self.store.close)
        self.worker.shutdown()
        log.info("stopped")

    async def run_until_signalled(self) -> None:
        await self.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        log.info("shutting down")
        await self.stop()
