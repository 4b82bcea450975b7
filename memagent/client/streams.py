"""A streamed generation as the clients return it: text pieces, then the server's `Usage`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import memagent.client.messages as m
from memagent.sampling import Usage


class GenerationStream:
    """Text pieces as the server decodes them. `usage` is None until the last piece arrived,
    then a `memagent.sampling.Usage`. Closing (or abandoning) it cancels the call, which stops
    the server's decoding."""

    def __init__(self, start: Callable[[], Iterator]):
        self.usage: Usage | None = None
        self._pieces = self._read(start)

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()

    def _read(self, start: Callable[[], Iterator]) -> Iterator[str]:
        with m.translated_errors():
            call = start()
            try:
                for response in call:
                    if response.HasField("text"):
                        yield response.text
                    elif response.HasField("usage"):
                        self.usage = m.usage(response.usage)
            finally:
                call.cancel()


class AsyncGenerationStream:
    """`GenerationStream` for asyncio: iterate it with `async for`; `usage` once it ended."""

    def __init__(self, start: Callable[[], AsyncIterator]):
        self.usage: Usage | None = None
        self._pieces = self._read(start)

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        return await anext(self._pieces)

    async def aclose(self) -> None:
        await self._pieces.aclose()

    async def _read(self, start: Callable[[], AsyncIterator]) -> AsyncIterator[str]:
        with m.translated_errors():
            call = start()
            try:
                async for response in call:
                    if response.HasField("text"):
                        yield response.text
                    elif response.HasField("usage"):
                        self.usage = m.usage(response.usage)
            finally:
                call.cancel()
