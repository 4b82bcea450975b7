"""A streamed generation as the clients return it: text pieces, then the server's `Usage`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import memagent.client.messages as m
from memagent.sampling import Usage
from memagent.v1 import memagent_pb2 as pb


class _Responses:
    def __init__(self) -> None:
        self.usage: Usage | None = None

    def _text(self, response: pb.GenerateResponse) -> str | None:
        """The response's text piece, or None for the closing usage (kept in `usage`)."""
        if response.HasField("usage"):
            self.usage = m.usage(response.usage)
            return None
        return response.text


class GenerationStream(_Responses):
    """Text pieces as the server decodes them. `usage` is None until the last piece arrived,
    then a `memagent.sampling.Usage`. Closing (or abandoning) it cancels the call, which stops
    the server's decoding."""

    def __init__(self, start: Callable[[], Iterator[pb.GenerateResponse]]):
        super().__init__()
        self._pieces = self._read(start)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def _read(self, start: Callable[[], Iterator[pb.GenerateResponse]]) -> Iterator[str]:
        with m.translated_errors():
            call = start()
            try:
                for response in call:
                    if (text := self._text(response)) is not None:
                        yield text
            finally:
                call.cancel()


class AsyncGenerationStream(_Responses):
    """`GenerationStream` for asyncio: iterate it with `async for`; `usage` once it ended."""

    def __init__(self, start: Callable[[], AsyncIterator[pb.GenerateResponse]]):
        super().__init__()
        self._pieces = self._read(start)

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        return await anext(self._pieces)

    async def aclose(self) -> None:
        await self._pieces.aclose()

    async def _read(self, start: Callable[[], AsyncIterator[pb.GenerateResponse]]) -> AsyncIterator[str]:
        with m.translated_errors():
            call = start()
            try:
                async for response in call:
                    if (text := self._text(response)) is not None:
                        yield text
            finally:
                call.cancel()
