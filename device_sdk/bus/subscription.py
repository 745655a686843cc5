"""A subscription: the messages of some topic filters as a bounded async iterator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import paho.mqtt.client as paho

from device_sdk.bounded import DropOldest
from device_sdk.protocol.errors import BusError, RequestTimeout

if TYPE_CHECKING:
    from .mqtt import MqttBus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """One message as it arrived."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class Subscription:
    """Messages matching any of its filters, in arrival order, as one async iterator.

    The queue is bounded: when a consumer falls `maxsize` messages behind, the oldest are
    dropped and counted in `dropped` rather than growing memory without limit.
    """

    def __init__(self, bus: MqttBus, filters: tuple[str, ...], qos: int, maxsize: int) -> None:
        self.filters = filters
        self.qos = qos
        self._bus = bus
        self._match = [f.split("/", 2)[2] if f.startswith("$share/") else f for f in filters]
        self._seen: dict[str, bool] = {}
        """The answer for each topic seen lately: paho builds a matcher per call, and this runs for
        every message on every subscription."""
        self._queue: DropOldest[Received] = DropOldest(maxsize)

    @property
    def dropped(self) -> int:
        return self._queue.dropped

    def matches(self, topic: str) -> bool:
        """Whether a topic matches any filter (remembered for the last 4,096 topics seen)."""
        known = self._seen.get(topic)
        if known is None:
            if len(self._seen) >= 4096:
                self._seen.clear()
            known = self._seen[topic] = any(paho.topic_matches_sub(f, topic) for f in self._match)
        return known

    def _put(self, message: Received) -> None:
        if self._queue.put(message) and self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4...: loud, no flood
            log.warning("subscription %s fell %d behind: dropped %d", self.filters, self._queue.maxsize, self.dropped)

    def _end(self) -> None:
        self._queue.close()

    def __aiter__(self) -> AsyncIterator[Received]:
        return self

    async def __anext__(self) -> Received:
        return await self._queue.__anext__()

    async def get(self, timeout: float | None = None) -> Received:
        """The next message, or `RequestTimeout`."""
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except TimeoutError:
            raise RequestTimeout(f"no message on {self.filters} within {timeout} s") from None
        except StopAsyncIteration:
            raise BusError(f"subscription {self.filters} is closed") from None

    async def close(self) -> None:
        await self._bus.unsubscribe(self)
        self._end()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
