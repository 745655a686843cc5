"""Which gateway serves which device, as the retained controller claims on the broker say: how long
after a gateway died every one of its devices was claimed by another (its sessions taken over)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.protocol.errors import DeviceSdkError
from device_sdk.protocol.messages import ControllerClaim, decode
from device_sdk.protocol.topics import Topics


class ClaimWatch:
    """Follows every device's controller claim; `takeover_s` after `gateway_died`."""

    def __init__(self, url: BrokerUrl, topics: Topics | None = None) -> None:
        self.url = url
        self.topics = topics or Topics()
        self.claims: dict[str, str] = {}
        self._orphans: dict[str, float] = {}
        """Devices of a dead gateway not claimed again yet, and since when."""
        self.takeovers: list[float] = []
        self._dead: set[str] = set()
        self._stack = contextlib.AsyncExitStack()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ClaimWatch:
        bus = await self._stack.enter_async_context(MqttBus(self.url, f"fleet-claims-{time.monotonic_ns()}"))
        inbox = await bus.subscribe(self.topics.all_devices("controller"), maxsize=1_000_000)

        async def follow() -> None:
            async for received in inbox:
                with contextlib.suppress(DeviceSdkError, ValueError):
                    claim = decode(received.payload)
                    if isinstance(claim, ControllerClaim):
                        self._claimed(claim.device_id, claim.controller_id)

        self._task = asyncio.ensure_future(follow())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._stack.aclose()

    def _claimed(self, device_id: str, controller_id: str) -> None:
        self.claims[device_id] = controller_id
        since = self._orphans.get(device_id)
        if since is not None and controller_id not in self._dead:
            self.takeovers.append(round(time.monotonic() - since, 2))
            del self._orphans[device_id]

    def gateway_died(self, gateway_id: str) -> None:
        """From now on the devices `gateway_id` served are orphans until another gateway claims them."""
        self._dead.add(gateway_id)
        now = time.monotonic()
        for device_id, controller in self.claims.items():
            if controller == gateway_id:
                self._orphans.setdefault(device_id, now)

    def served_by(self, gateway_id: str) -> int:
        return sum(1 for controller in self.claims.values() if controller == gateway_id)

    @property
    def orphans(self) -> int:
        return len(self._orphans)
