"""Running code around any gRPC method handler, whatever its streaming shape (for interceptors).

A wrapped handler also answers bytes that do not decode as its request message with
INVALID_ARGUMENT (gRPC itself would answer UNKNOWN with the parser's error): the deserializer
hands on an `Unreadable` marker, and the handler aborts when it meets one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import grpc

# around(context) -> an async context manager entered before the method runs, exited after.
Around = Callable[[grpc.aio.ServicerContext], contextlib.AbstractAsyncContextManager]


class Unreadable:
    """Request bytes that are not the method's request message."""


def _tolerant(deserializer):
    if deserializer is None:
        return None

    def deserialize(data: bytes):
        try:
            return deserializer(data)
        except Exception:  # noqa: BLE001 -- any parser error means the same to the caller
            return Unreadable()

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid protobuf message for this method")


async def _checked(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> AsyncIterator:
    async for request in requests:
        if isinstance(request, Unreadable):
            await _refuse(context)
        yield request


def wrap(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    streaming_in = handler.request_streaming

    async def checked(request, context):
        if streaming_in:
            return _checked(request, context)
        if isinstance(request, Unreadable):
            await _refuse(context)
        return request

    if handler.response_streaming:
        behavior = handler.stream_stream if streaming_in else handler.unary_stream

        async def wrapped(request, context):
            async with around(context):
                async for response in behavior(await checked(request, context), context):
                    yield response

        make = grpc.stream_stream_rpc_method_handler if streaming_in else grpc.unary_stream_rpc_method_handler
    else:
        behavior = handler.stream_unary if streaming_in else handler.unary_unary

        async def wrapped(request, context):
            async with around(context):
                return await behavior(await checked(request, context), context)

        make = grpc.stream_unary_rpc_method_handler if streaming_in else grpc.unary_unary_rpc_method_handler
    return make(
        wrapped,
        request_deserializer=_tolerant(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )
