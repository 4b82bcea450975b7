"""Bearer tokens to tenants: every MemoryService call runs as the tenant its token names.

The tokens file is JSON: {"tokens": {"<token>": "<tenant>", ...}}; the server reloads it on
SIGHUP (`AuthInterceptor.tokens` is replaced whole). Health checks and reflection need no token.
With auth off every caller is the tenant "default". A token is compared with every known token
in constant time, so neither timing nor the order of the file tells a caller how close it was.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import json
import os
import secrets
from pathlib import Path

import grpc

from memagent.store import check_name
from memagent_server.handler_wrapping import wrap

SERVICE_PREFIX = "/memagent.v1.MemoryService/"
DEFAULT_TENANT = "default"

# Where a token comes from and how a caller sends it: said on UNAUTHENTICATED and at first start.
HOW_TO_PASS_A_TOKEN = (
    "send metadata 'authorization: Bearer <token>' (memagent clients and adapters read $MEMAGENT_TOKEN; "
    "`memagent token` on the server's host prints one from its tokens file, DATA_DIR/tokens.json by default)"
)

_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("memagent_tenant")


def current_tenant() -> str:
    """The calling tenant; read it at the start of a handler (set by AuthInterceptor)."""
    return _tenant.get()


def tenant_for_logs() -> str | None:
    """The calling tenant, or None before (or without) authentication."""
    return _tenant.get(None)


def load_tokens(path: str | Path) -> dict[str, str]:
    try:
        tokens = json.loads(Path(path).read_text())["tokens"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f'{path}: expected JSON {{"tokens": {{"<token>": "<tenant>"}}}} ({err})') from err
    if not isinstance(tokens, dict) or not tokens:
        raise ValueError(f"{path}: no tokens")
    for token, tenant in tokens.items():
        if not isinstance(token, str) or len(token) < 16:
            raise ValueError(f"{path}: tokens must be strings of at least 16 characters")
        check_name("tenant", tenant)
    return tokens


def create_tokens(path: str | Path, tenant: str = DEFAULT_TENANT) -> dict[str, str]:
    """A new tokens file holding one random token for `tenant`, readable by its owner only."""
    tokens = {secrets.token_urlsafe(32): tenant}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"tokens": tokens}, f, indent=2)
    return tokens


def tenant_of(tokens: dict[str, str], metadata) -> str | None:
    """The tenant that the call's bearer token names, or None (no, several or an unknown token)."""
    values = [v for k, v in metadata or () if k == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "bearer":
        return None
    given, tenant = token.strip().encode(), None
    for known, owner in tokens.items():  # no early exit: every call compares them all
        if hmac.compare_digest(given, known.encode()):
            tenant = owner
    return tenant


def act_as(tenant: str) -> None:
    """Run the rest of this call as `tenant` (for hosts that authenticate calls themselves)."""
    _tenant.set(tenant)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: dict[str, str] | None):
        """`tokens` maps bearer tokens to tenants; None turns authentication off."""
        self.tokens = tokens

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(SERVICE_PREFIX):
            return handler
        tenant = DEFAULT_TENANT if self.tokens is None else self._tenant(details.invocation_metadata)
        return wrap(handler, lambda context: self._as(tenant, context))

    def _tenant(self, metadata) -> str | None:
        return tenant_of(self.tokens, metadata)

    @contextlib.asynccontextmanager
    async def _as(self, tenant: str | None, context: grpc.aio.ServicerContext):
        if tenant is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or invalid token: {HOW_TO_PASS_A_TOKEN}",
            )
        # Every service RPC passes here and sets its tenant before its handler runs, so nothing
        # needs resetting; a reset would fail anyway when an abandoned response stream is
        # closed later from another context.
        act_as(tenant)
        yield
