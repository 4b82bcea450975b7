"""Running code around any gRPC method handler, whatever its streaming shape (for interceptors)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import grpc

# around(context) -> an async context manager entered before the method runs, exited after.
Around = Callable[[grpc.aio.ServicerContext], contextlib.AbstractAsyncContextManager]


def wrap(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    if handler.response_streaming:
        behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

        async def wrapped(request, context):
            async with around(context):
                async for response in behavior(request, context):
                    yield response

        make = (
            grpc.stream_stream_rpc_method_handler if handler.request_streaming else grpc.unary_stream_rpc_method_handler
        )
    else:
        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def wrapped(request, context):
            async with around(context):
                return await behavior(request, context)

        make = (
            grpc.stream_unary_rpc_method_handler if handler.request_streaming else grpc.unary_unary_rpc_method_handler
        )
    return make(
        wrapped, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
