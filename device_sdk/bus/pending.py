"""Request/response correlation: a future per key, resolved by the matching answer or a timeout."""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

from device_sdk.protocol.errors import RequestTimeout

T = TypeVar("T")


class Pending(Generic[T]):
    """Futures keyed by correlation id. Late or unknown answers are counted, never raised."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[T]] = {}
        self.unmatched = 0

    def expect(self, key: str) -> asyncio.Future[T]:
        if key in self._futures:
            raise ValueError(f"already waiting for {key}")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._futures[key] = fut
        return fut

    def resolve(self, key: str, value: T) -> bool:
        fut = self._futures.get(key)
        if fut is None or fut.done():
            self.unmatched += 1
            return False
        fut.set_result(value)
        return True

    def fail(self, key: str, exc: BaseException) -> bool:
        fut = self._futures.get(key)
        if fut is None or fut.done():
            self.unmatched += 1
            return False
        fut.set_exception(exc)
        return True

    async def wait(self, key: str, fut: asyncio.Future[T], timeout: float | None, what: str) -> T:
        """Await the answer for `key`; `RequestTimeout` after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            raise RequestTimeout(f"no answer to {what} within {timeout} s") from None
        finally:
            self._futures.pop(key, None)

    def discard(self, key: str) -> None:
        fut = self._futures.pop(key, None)
        if fut is not None:
            fut.cancel()

    def fail_all(self, exc: BaseException) -> None:
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(exc)

    def __len__(self) -> int:
        return len(self._futures)
