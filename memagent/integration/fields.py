"""The constructor fields every framework adapter shares (LangChain and LlamaIndex models are
both pydantic models): which memory, and where it lives."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from memagent.integration.backend import ClosesBackend, MemoryBackend, connect


class MemoryConnection(ClosesBackend, BaseModel):
    """One memory (`memory=`, or none: each call names one) on a server (`server=`, `token=`,
    `timeout=`; $MEMAGENT_SERVER and $MEMAGENT_TOKEN by default) or in an in-process `engine=`.
    `close()` or `with` closes the connection it opened."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: str | None = Field(default=None, description="The memory id; None: each call names one.")
    server: str | None = Field(default=None, description='Address of a memagent service, e.g. "127.0.0.1:50051".')
    token: SecretStr | None = Field(default=None, description="Bearer token for the service.")
    timeout: float | None = Field(default=None, description="Seconds each server call may take.")
    engine: Any = Field(default=None, exclude=True, description="An engine from memagent.load(), instead of a server.")

    _backend: MemoryBackend = PrivateAttr()

    @model_validator(mode="after")
    def _connect_memagent_backend(self) -> "MemoryConnection":
        token = self.token.get_secret_value() if self.token else None
        self._backend = connect(self.memory, server=self.server, token=token, timeout=self.timeout, engine=self.engine)
        return self

    @property
    def backend(self) -> MemoryBackend:
        return self._backend
