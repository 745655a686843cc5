"""Watching the LAN: services as they appear, change and go away (`Browser`), and the one-shot
forms (`browse`, `find_broker`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Self

from zeroconf import ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from device_sdk.bounded import DropOldest
from device_sdk.bus.url import BrokerUrl
from device_sdk.protocol.errors import BusError, ConfigError, DeviceSdkError, ErrorCode, ProtocolError
from device_sdk.protocol.messages import DeviceInfo

from .advertise import open_zeroconf
from .records import (
    ALL_TYPES,
    DEVICE_TYPE,
    GATEWAY_TYPE,
    MQTT_TYPE,
    GatewayInfo,
    Interfaces,
    broker_url,
    device_info_from_txt,
    gateway_info_from_txt,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Found:
    """One resolved service: where it is, and what its TXT record says (one of `device`, `gateway`
    or `broker`, by `service_type`)."""

    service_type: str
    name: str
    addresses: tuple[str, ...]
    port: int
    host: str | None = None
    device: DeviceInfo | None = None
    gateway: GatewayInfo | None = None
    broker: BrokerUrl | None = None

    @property
    def kind(self) -> str:
        """`device`, `gateway` or `broker`."""
        return "device" if self.device is not None else "gateway" if self.gateway is not None else "broker"

    @property
    def instance(self) -> str:
        """The instance name alone (`speaker-1` of `speaker-1._shop-device._tcp.local.`)."""
        return self.name[: -len(self.service_type) - 1] if self.name.endswith(self.service_type) else self.name

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kind": self.kind,
            "service_type": self.service_type,
            "name": self.name,
            "instance": self.instance,
            "addresses": list(self.addresses),
            "port": self.port,
            "host": self.host,
        }
        if self.device is not None:
            entry["device"] = self.device.model_dump(mode="json", exclude_none=True)
        if self.gateway is not None:
            entry["gateway"] = self.gateway.as_dict()
        if self.broker is not None:
            entry["broker"] = str(self.broker)
        return entry


class ChangeKind(StrEnum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    REFUSED = "refused"


@dataclass(frozen=True)
class Change:
    """A service appeared, changed or went away (`found` is what was last known of it), or was
    refused: its TXT record does not validate (`error`, a `ProtocolError` with a code)."""

    kind: ChangeKind
    service_type: str
    name: str
    found: Found | None = None
    error: DeviceSdkError | None = None


class Browser:
    """Watches device, gateway and broker services: `found` is what is there now, `refused` the
    services whose TXT record does not validate, and `changes()` says each change as it happens.

        async with Browser(interfaces=["127.0.0.1"]) as browser:
            async for change in browser.changes(timeout=3.0):
                ...

    A service whose TXT record does not validate is skipped (in `refused`, and a REFUSED change),
    never raised. Pass `zc` to share a running AsyncZeroconf (it is not closed then).
    """

    def __init__(
        self,
        types: Sequence[str] = ALL_TYPES,
        *,
        interfaces: Interfaces = None,
        zc: AsyncZeroconf | None = None,
        resolve_timeout: float = 3.0,
    ) -> None:
        unknown = set(types) - set(ALL_TYPES)
        if unknown:
            raise ConfigError(f"cannot browse {sorted(unknown)}: only {', '.join(ALL_TYPES)}")
        self.types = tuple(types)
        self.interfaces = interfaces
        self.resolve_timeout = resolve_timeout
        self.found: dict[str, Found] = {}
        self.refused: dict[str, DeviceSdkError] = {}
        self._zc = zc
        self._own_zc = zc is None
        self._browser: AsyncServiceBrowser | None = None
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._changes: DropOldest[Change] = DropOldest(1000)

    async def __aenter__(self) -> Self:
        if self._zc is None:
            self._zc = open_zeroconf(self.interfaces)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, list(self.types), handlers=[self._on_change])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        tasks = list(self._resolving.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_zc and self._zc is not None:
            await self._zc.async_close()
            self._zc = None
        self._changes.close()

    async def changes(self, timeout: float | None = None) -> AsyncGenerator[Change, None]:
        """Each change as it happens, for `timeout` seconds (None: until the browser is closed)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    change = await anext(self._changes)
            except (TimeoutError, StopAsyncIteration):
                return
            yield change

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        key = name.lower()
        pending = self._resolving.pop(key, None)
        if pending is not None:
            pending.cancel()
        if state_change is ServiceStateChange.Removed:
            self.refused.pop(key, None)
            gone = self.found.pop(key, None)
            if gone is not None:
                self._changes.put(Change(ChangeKind.REMOVED, service_type, name, gone))
            return
        task = asyncio.create_task(self._resolve(zeroconf, service_type, name))
        self._resolving[key] = task
        task.add_done_callback(self._resolved)

    def _resolved(self, task: asyncio.Task[None]) -> None:
        for key, pending in list(self._resolving.items()):
            if pending is task:
                del self._resolving[key]

    async def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zc, int(self.resolve_timeout * 1000)):
            # python-zeroconf 0.154 may miss an address that arrived before its SRV in one
            # packet; by now the cache has it.
            info.load_from_cache(zc)
        addresses = tuple(info.parsed_addresses())
        if info.port is None or not addresses:
            log.debug("%s did not resolve within %.1f s", name, self.resolve_timeout)
            return
        key = name.lower()
        try:
            found = _found(service_type, name, addresses, info.port, info.server, info.properties)
        except ProtocolError as exc:
            log.info("skipping %s: %s", name, exc)
            self.refused[key] = exc
            self.found.pop(key, None)
            self._changes.put(Change(ChangeKind.REFUSED, service_type, name, error=exc))
            return
        self.refused.pop(key, None)
        before = self.found.get(key)
        self.found[key] = found
        if before is None:
            self._changes.put(Change(ChangeKind.ADDED, service_type, name, found))
        elif before != found:
            self._changes.put(Change(ChangeKind.UPDATED, service_type, name, found))


def _found(
    service_type: str,
    name: str,
    addresses: tuple[str, ...],
    port: int,
    host: str | None,
    properties: Mapping[bytes, bytes | None],
) -> Found:
    base = Found(service_type, name, addresses, port, host)
    if service_type == DEVICE_TYPE:
        return replace(base, device=device_info_from_txt(properties))
    if service_type == GATEWAY_TYPE:
        return replace(base, gateway=gateway_info_from_txt(properties))
    return replace(base, broker=broker_url(addresses, port, properties))


async def browse(
    timeout: float = 3.0, types: Sequence[str] = ALL_TYPES, *, interfaces: Interfaces = None
) -> list[Found]:
    """Everything of `types` that is there after browsing for `timeout` seconds, by kind and name."""
    async with Browser(types, interfaces=interfaces) as browser:
        async for _ in browser.changes(timeout):
            pass
        return ordered(browser.found.values())


async def find_broker(timeout: float = 5.0, interfaces: Interfaces = None) -> BrokerUrl:
    """The first MQTT broker that advertises `_mqtt._tcp` (see `broker_url` for how its URL is
    made), or `BusError` when none answers within `timeout` seconds."""
    async with (
        Browser((MQTT_TYPE,), interfaces=interfaces) as browser,
        contextlib.aclosing(browser.changes(timeout)) as changes,
    ):
        async for change in changes:
            if change.kind is ChangeKind.ADDED and change.found is not None and change.found.broker is not None:
                log.info("found the broker %s (%s)", change.found.broker, change.name)
                return change.found.broker
    raise BusError(f"no MQTT broker advertised {MQTT_TYPE} within {timeout} s", ErrorCode.NOT_CONNECTED)


def ordered(found: Iterable[Found]) -> list[Found]:
    order = {"gateway": 0, "broker": 1, "device": 2}
    return sorted(found, key=lambda f: (order[f.kind], f.name.lower()))
