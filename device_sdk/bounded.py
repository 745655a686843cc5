"""A bounded queue read as an async iterator: when it is full, the oldest item makes room."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")
_END = object()


class DropOldest(Generic[T]):
    """FIFO of at most `maxsize` items; a slow reader loses the oldest, counted in `dropped`."""

    def __init__(self, maxsize: int) -> None:
        self.dropped = 0
        self.closed = False
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize)

    @property
    def maxsize(self) -> int:
        return self._queue.maxsize

    def put(self, item: T) -> bool:
        """Queue `item`; True when the oldest item was dropped to make room."""
        return self._put(item)

    def _put(self, item: object) -> bool:
        if self.closed:
            return False
        full = self._queue.full()
        if full:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)
        return full

    def close(self) -> None:
        """End the iteration once the reader has taken what is queued."""
        self._put(_END)
        self.closed = True

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            raise StopAsyncIteration
        return item  # type: ignore[return-value]
