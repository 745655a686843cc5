"""A part that starts and stops, used as an async context manager."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Service:
    """`async with part:` starts it and stops it on the way out, also on errors."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
