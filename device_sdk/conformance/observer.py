"""What a conformance run sees of the device under test: every message on its status, info, up and
audio topics, in arrival order with the time it came, and the pongs it answers as a controller would."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.subscription import Received, Subscription
from device_sdk.protocol.errors import DeviceSdkError, ProtocolError
from device_sdk.protocol.messages import Ping, Pong, decode
from device_sdk.protocol.topics import Topics


@dataclass(frozen=True)
class Seen:
    """One message of the device: its topic leaf, the message (None when unreadable or audio), the raw
    bytes, how it came (QoS, retained) and when (the run's clock)."""

    leaf: str
    message: Any
    raw: bytes
    qos: int
    retain: bool
    at: float
    error: str | None = None


class Observer:
    """Subscribes to the device's topics on `bus` and keeps what arrives; answers each `ping` with a
    `pong` from `controller_id`."""

    def __init__(self, bus: MqttBus, topics: Topics, device_id: str, controller_id: str) -> None:
        self.bus, self.topics, self.device_id, self.controller_id = bus, topics, device_id, controller_id
        self.seen: list[Seen] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    async def start(self) -> None:
        t, d = self.topics, self.device_id
        inbox = await self.bus.subscribe(t.device_status(d), t.device_info(d), t.device_up(d), t.device_audio(d))
        self._task = asyncio.create_task(self._read(inbox))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def now(self) -> float:
        return self._loop.time()

    async def _read(self, inbox: Subscription) -> None:
        async for received in inbox:
            seen = self._seen(received)
            async with self._changed:
                self.seen.append(seen)
                self._changed.notify_all()
            if isinstance(seen.message, Ping):
                pong = Pong(seq=seen.message.seq, controller_id=self.controller_id)
                with contextlib.suppress(DeviceSdkError):
                    await self.bus.publish(self.topics.device_down(self.device_id), pong.encode(), qos=0)

    def _seen(self, received: Received) -> Seen:
        leaf = received.topic.rsplit("/", 1)[-1]
        message: Any = None
        error = None
        if leaf != "audio" and received.payload:
            try:
                message = decode(received.payload)
            except ProtocolError as exc:
                error = f"{exc.code.value}: {exc.text}"
        return Seen(leaf, message, received.payload, received.qos, received.retain, self.now(), error)

    def find(self, match: Callable[[Seen], bool], since: float = 0.0) -> list[Seen]:
        return [s for s in self.seen if s.at >= since and match(s)]

    async def wait(self, match: Callable[[Seen], bool], timeout: float, since: float = 0.0) -> Seen | None:
        """The first message since `since` that matches, waiting up to `timeout` seconds (None: none came)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, 0.0)), self._changed:
                await self._changed.wait_for(lambda: bool(self.find(match, since)))
        found = self.find(match, since)
        return found[0] if found else None

    async def send(self, payload: bytes, qos: int = 1) -> None:
        """Publish on the device's down topic, as its controller."""
        await self.bus.publish(self.topics.device_down(self.device_id), payload, qos=qos)
