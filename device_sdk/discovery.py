"""Zeroconf (mDNS / DNS-SD) discovery: devices and gateways advertise themselves, a gateway finds its broker.

A device advertises `<device_id>._shop-device._tcp.local.` with a TXT record that says what its
retained `device.info` says on the bus (`device_txt` / `device_info_from_txt`, one mapping both
ways); a gateway advertises `<gateway_id>._shop-gateway._tcp.local.` with the broker URL devices
should use; a broker is a `_mqtt._tcp.local.` service. `Browser` watches all three as services
appear, change and go away; `browse` and `find_broker` are the one-shot forms. See docs/discovery.md.

Every call takes `interfaces`: None for all of the host's interfaces, or a list of addresses
(the tests pass `["127.0.0.1"]`, so nothing leaves the machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import secrets
import socket
import sys
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Self, TextIO

from pydantic import ValidationError
from zeroconf import (  # type: ignore[attr-defined]  # exported, not in __all__
    BadTypeInNameException,
    DNSOutgoing,
    DNSQuestion,
    DNSService,
    InterfaceChoice,
    NonUniqueNameException,
    RecordUpdate,
    RecordUpdateListener,
    ServiceNameAlreadyRegistered,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .bounded import DropOldest
from .errors import BusError, ConfigError, DeviceSdkError, ErrorCode, ProtocolError
from .messages import PROTOCOL_VERSION, Capability, DeviceInfo, first_error
from .mqtt import BrokerUrl
from .topics import check_id

log = logging.getLogger(__name__)

DEVICE_TYPE = "_shop-device._tcp.local."
GATEWAY_TYPE = "_shop-gateway._tcp.local."
MQTT_TYPE = "_mqtt._tcp.local."
ALL_TYPES = (DEVICE_TYPE, GATEWAY_TYPE, MQTT_TYPE)
TXT_VERSION = "1"
"""`txtvers` of the device and gateway TXT records; a record with another version is refused."""
TTL = 120
"""Seconds every advertised record lives (RFC 6762 advises 120 s for host records, 75 min for the
others): a browser that honours it drops a device that vanished without a goodbye within this long.
python-zeroconf's browsers, this module's included, keep a PTR record at least 1125 s."""
MQTTS_PORT = 8883

_TYPE_SRV = 33
_CLASS_IN = 1
_CAPABILITY = re.compile(r"^[a-z0-9_]{1,32}$")
_KNOWN_CAPABILITIES = {c.value for c in Capability}
_TRUE = {"1", "true", "yes", "on"}
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}

Interfaces = Sequence[str] | None
"""Addresses of the interfaces to use (`["127.0.0.1"]`), or None for all of them."""


# TXT records ---------------------------------------------------------------------------------


def device_txt(info: DeviceInfo) -> dict[str, str]:
    """The TXT properties of a device: the fields of its `device.info`, as short keys."""
    txt = {
        "txtvers": TXT_VERSION,
        "id": info.device_id,
        "kind": info.kind.value,
        "caps": ",".join(c.value for c in info.capabilities),
        "proto": str(info.protocol),
    }
    if info.firmware is not None:
        txt["fw"] = info.firmware
    if info.room is not None:
        txt["room"] = info.room
    return txt


def device_info_from_txt(properties: Mapping[bytes, bytes | None]) -> DeviceInfo:
    """The `DeviceInfo` a device's TXT record describes, or `ProtocolError` (code `bad_message`, or
    `unsupported_version` for a `txtvers` other than 1). Nothing else is raised.

    Keys are case-insensitive and the first of a repeated key counts (RFC 6763 6.4); unknown keys
    are ignored; `txtvers` and `id` are required. A capability this SDK does not know is dropped,
    so a newer device stays visible to an older browser; one that is not `[a-z0-9_]{1,32}` is refused.
    """
    fields = _txt_fields(properties)
    _check_version(fields)
    data: dict[str, Any] = {"device_id": _text(fields, "id", required=True)}
    for key, name in (("kind", "kind"), ("fw", "firmware"), ("room", "room")):
        value = _text(fields, key)
        if value is not None:
            data[name] = value
    proto = _text(fields, "proto")
    if proto is not None:
        data["protocol"] = _number(proto, "proto")
    caps = _text(fields, "caps")
    if caps:
        names = caps.split(",")
        for name in names:
            if not _CAPABILITY.fullmatch(name):
                raise ProtocolError(f"TXT caps: {name!r} is not a capability name", ErrorCode.BAD_MESSAGE)
        data["capabilities"] = [name for name in names if name in _KNOWN_CAPABILITIES]
    return _validated(DeviceInfo, data)


@dataclass(frozen=True)
class GatewayInfo:
    """What a gateway advertises: its id, its protocol version and the broker devices should use."""

    gateway_id: str
    broker: BrokerUrl | None = None
    protocol: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        check_id(self.gateway_id, "gateway id")

    def as_dict(self) -> dict[str, Any]:
        return {
            "gateway_id": self.gateway_id,
            "protocol": self.protocol,
            "broker": str(self.broker) if self.broker is not None else None,
        }


def gateway_txt(info: GatewayInfo) -> dict[str, str]:
    """The TXT properties of a gateway; the broker URL never carries credentials."""
    txt = {"txtvers": TXT_VERSION, "id": info.gateway_id, "proto": str(info.protocol)}
    if info.broker is not None:
        txt["broker"] = str(info.broker)  # BrokerUrl's text form has no user or password
    return txt


def gateway_info_from_txt(properties: Mapping[bytes, bytes | None]) -> GatewayInfo:
    """The `GatewayInfo` a gateway's TXT record describes, or `ProtocolError`."""
    fields = _txt_fields(properties)
    _check_version(fields)
    gateway_id = _text(fields, "id", required=True) or ""
    proto = _text(fields, "proto")
    protocol = _number(proto, "proto") if proto is not None else PROTOCOL_VERSION
    if not 1 <= protocol <= 255:
        raise ProtocolError(f"TXT proto {protocol} is not 1-255", ErrorCode.BAD_MESSAGE)
    broker = _text(fields, "broker")
    url = None
    if broker is not None:
        try:
            url = BrokerUrl.parse(broker)
        except DeviceSdkError as exc:
            raise ProtocolError(f"TXT broker: {exc.text}", ErrorCode.BAD_MESSAGE) from None
    try:
        return GatewayInfo(gateway_id, url, protocol)
    except ProtocolError as exc:
        raise ProtocolError(f"TXT id: {exc.text}", ErrorCode.BAD_MESSAGE) from None


def broker_url(addresses: Sequence[str], port: int, properties: Mapping[bytes, bytes | None]) -> BrokerUrl:
    """The URL of a `_mqtt._tcp` service: its first IPv4 address (else its first address) and port;
    `mqtts` when its TXT says `tls=1` (or true/yes/on) or its port is 8883, else `mqtt`."""
    if not addresses:
        raise ProtocolError("the broker service has no address", ErrorCode.BAD_MESSAGE)
    if not 0 < port < 65536:
        raise ProtocolError(f"the broker service has port {port}", ErrorCode.BAD_MESSAGE)
    fields = _txt_fields(properties)
    try:
        tls_flag = _text(fields, "tls")
    except ProtocolError:
        tls_flag = None
    tls = port == MQTTS_PORT or (tls_flag or "").lower() in _TRUE
    ipv4 = [a for a in addresses if _ip_version(a) == 4]
    return BrokerUrl((ipv4 or list(addresses))[0], port, tls=tls)


def _ip_version(address: str) -> int | None:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:
        return None


def _txt_fields(properties: Mapping[bytes, bytes | None]) -> dict[str, bytes | None]:
    """Keys lower-cased (RFC 6763 6.4: case-insensitive; the first of a repeated key counts); keys
    that are not printable ASCII cannot be ours and are skipped."""
    fields: dict[str, bytes | None] = {}
    for raw, value in properties.items():
        if not isinstance(raw, bytes) or not all(0x20 <= b <= 0x7E for b in raw):
            continue
        fields.setdefault(raw.decode("ascii").lower(), value)
    return fields


def _text(fields: Mapping[str, bytes | None], key: str, *, required: bool = False) -> str | None:
    if key not in fields:
        if required:
            raise ProtocolError(f"the TXT record has no {key!r}", ErrorCode.BAD_MESSAGE)
        return None
    value = fields[key]
    if value is None:
        raise ProtocolError(f"TXT {key!r} has no value", ErrorCode.BAD_MESSAGE)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"TXT {key!r} is not UTF-8", ErrorCode.BAD_MESSAGE) from None


def _check_version(fields: Mapping[str, bytes | None]) -> None:
    version = _text(fields, "txtvers", required=True)
    if version != TXT_VERSION:
        raise ProtocolError(f"TXT version {version!r} is not {TXT_VERSION}", ErrorCode.UNSUPPORTED_VERSION)


def _number(value: str, key: str) -> int:
    if not re.fullmatch(r"[0-9]{1,3}", value):
        raise ProtocolError(f"TXT {key} {value!r} is not a number", ErrorCode.BAD_MESSAGE)
    return int(value)


def _validated(model: type[DeviceInfo], data: dict[str, Any]) -> DeviceInfo:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"TXT {first_error(exc)}", ErrorCode.BAD_MESSAGE) from None


# what a browser finds -----------------------------------------------------------------------


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
        return _ordered(browser.found.values())


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


def _ordered(found: Iterable[Found]) -> list[Found]:
    order = {"gateway": 0, "broker": 1, "device": 2}
    return sorted(found, key=lambda f: (order[f.kind], f.name.lower()))


# advertising --------------------------------------------------------------------------------


class _Rivals(RecordUpdateListener):
    """Notes every SRV record for `name` that points at another host than ours: another responder
    has the name. (zeroconf's probes ask for unicast replies, which on one host may reach another
    process's socket on port 5353; this catches the multicast answers to a plain question too.)"""

    def __init__(self, name: str, server: str) -> None:
        self.key = name.lower()
        self.server = server.lower()
        self.hosts: set[str] = set()

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            record = update.new
            if not isinstance(record, DNSService) or record.key != self.key or record.ttl == 0:
                continue
            if record.server_key != self.server:
                self.hosts.add(record.server)


class Advertiser:
    """Advertises one service while the context is open; the name must be unique on the network.

    A name already taken (by another responder on the LAN, on this host or in this process) is a
    `ConfigError` naming it; the service is not advertised then. Prefer `DeviceAdvertiser`,
    `GatewayAdvertiser` and `BrokerAdvertiser`.
    """

    def __init__(
        self,
        service_type: str,
        instance: str,
        properties: Mapping[str, str],
        *,
        port: int = 0,
        interfaces: Interfaces = None,
        zc: AsyncZeroconf | None = None,
        what: str = "service",
    ) -> None:
        if len(instance.encode()) > 63:
            raise ConfigError(f"{what} name {instance!r} is longer than a DNS label (63 bytes)")
        for key, value in properties.items():
            if len(f"{key}={value}".encode()) > 255:
                raise ConfigError(f"TXT {key!r} of {what} {instance!r} is longer than 255 bytes")
        self.service_type = service_type
        self.name = f"{instance}.{service_type}"
        self.what = what
        self.addresses = _advertised_addresses(interfaces)
        self._interfaces = interfaces
        self._port = port
        self._server = f"{_label(instance)}-{secrets.token_hex(3)}.local."
        self._properties = dict(properties)
        self._zc = zc
        self._own_zc = zc is None
        self._info: AsyncServiceInfo | None = None

    @property
    def info(self) -> AsyncServiceInfo:
        if self._info is None:
            raise BusError(f"{self.what} {self.name} is not advertised")
        return self._info

    def _service_info(self) -> AsyncServiceInfo:
        try:
            return AsyncServiceInfo(
                self.service_type,
                self.name,
                port=self._port,
                properties=self._properties,
                server=self._server,
                host_ttl=TTL,
                other_ttl=TTL,
                parsed_addresses=list(self.addresses),
            )
        except BadTypeInNameException as exc:
            raise ConfigError(f"{self.what} name {self.name!r} is not a DNS-SD name: {exc}") from None

    async def __aenter__(self) -> Self:
        info = self._service_info()
        if self._zc is None:
            self._zc = open_zeroconf(self._interfaces)
        try:
            await self._register(self._zc.zeroconf, info)
        except BaseException:
            if self._own_zc:
                await self._zc.async_close()
                self._zc = None
            raise
        self._info = info
        log.info("advertising %s on %s", self.name, ", ".join(self.addresses))
        return self

    async def _register(self, zc: Zeroconf, info: AsyncServiceInfo) -> None:
        await zc.async_wait_for_start()
        rivals = _Rivals(self.name, self._server)
        zc.async_add_listener(rivals, None)
        try:
            cached = zc.cache.get_by_details(self.name, _TYPE_SRV, _CLASS_IN)
            if cached is not None and not cached.is_expired(current_time_millis()):
                raise self._conflict("seen on the network")
            question = DNSOutgoing(0)  # a multicast (QM) question for the name: a holder answers to all
            question.add_question(DNSQuestion(self.name, _TYPE_SRV, _CLASS_IN))
            zc.async_send(question)
            try:
                await zc.async_check_service(info, allow_name_change=False)  # RFC 6762 probes
            except NonUniqueNameException:
                raise self._conflict("another responder defends it") from None
            if rivals.hosts:
                raise self._conflict(f"answered by {', '.join(sorted(rivals.hosts))}")
            try:
                announced = await zc.async_register_service(info, cooperating_responders=True)
            except ServiceNameAlreadyRegistered:
                raise self._conflict("already advertised by this process") from None
            await announced
            if rivals.hosts:  # a late answer: withdraw rather than fight over the name
                await (await zc.async_unregister_service(info))
                raise self._conflict(f"answered by {', '.join(sorted(rivals.hosts))}")
        finally:
            zc.async_remove_listener(rivals)

    def _conflict(self, how: str) -> ConfigError:
        return ConfigError(f"the {self.what} name {self.name} is taken ({how}): each must be unique on the network")

    async def update_properties(self, properties: Mapping[str, str]) -> None:
        """Advertise a new TXT record under the same name (browsers see an update)."""
        if self._zc is None or self._info is None:
            raise BusError(f"{self.what} {self.name} is not advertised")
        self._properties = dict(properties)
        info = self._service_info()
        await (await self._zc.async_update_service(info))
        self._info = info

    async def __aexit__(self, *exc: object) -> None:
        if self._zc is None:
            return
        if self._info is not None:
            with contextlib.suppress(Exception):  # a goodbye that cannot be sent: the records expire
                await (await self._zc.async_unregister_service(self._info))
            self._info = None
        if self._own_zc:
            await self._zc.async_close()
            self._zc = None


class DeviceAdvertiser(Advertiser):
    """Advertises a device as `<device_id>._shop-device._tcp.local.` with `device_txt(info)`.

    `port` is the port of a local endpoint the device offers, if any: devices reach the bus over
    MQTT and need none, so it is 0 by default.
    """

    def __init__(
        self, info: DeviceInfo, *, port: int = 0, interfaces: Interfaces = None, zc: AsyncZeroconf | None = None
    ) -> None:
        super().__init__(
            DEVICE_TYPE, info.device_id, device_txt(info), port=port, interfaces=interfaces, zc=zc, what="device"
        )
        self.device = info

    async def update(self, info: DeviceInfo) -> None:
        """Advertise what the device is now (after a firmware update, a move to another room)."""
        if info.device_id != self.device.device_id:
            raise ConfigError(f"device {self.device.device_id} cannot be re-advertised as {info.device_id}")
        await self.update_properties(device_txt(info))
        self.device = info


class GatewayAdvertiser(Advertiser):
    """Advertises a gateway as `<gateway_id>._shop-gateway._tcp.local.` with `gateway_txt(info)`.

    A broker URL on a wildcard host (`0.0.0.0`, from `serve --host 0.0.0.0`) is advertised with the
    first address the gateway advertises instead, so that devices can use it. `port` defaults to the
    broker's port.
    """

    def __init__(
        self,
        info: GatewayInfo,
        *,
        port: int | None = None,
        interfaces: Interfaces = None,
        zc: AsyncZeroconf | None = None,
    ) -> None:
        addresses = _advertised_addresses(interfaces)
        if info.broker is not None and info.broker.host in _WILDCARD_HOSTS:
            info = replace(info, broker=replace(info.broker, host=addresses[0]))
        if port is None:
            port = info.broker.port if info.broker is not None else 0
        super().__init__(
            GATEWAY_TYPE, info.gateway_id, gateway_txt(info), port=port, interfaces=interfaces, zc=zc, what="gateway"
        )
        self.gateway = info


class BrokerAdvertiser(Advertiser):
    """Advertises an MQTT broker as `_mqtt._tcp` on its behalf (Mosquitto does not advertise itself).

    The TXT record says `tls=1` for an `mqtts` URL. The broker's own host is advertised when it is
    an IP address; otherwise this host's addresses are (the broker is assumed to run here).
    """

    def __init__(
        self,
        url: BrokerUrl,
        *,
        name: str | None = None,
        interfaces: Interfaces = None,
        zc: AsyncZeroconf | None = None,
    ) -> None:
        instance = name or f"mqtt-{_label(socket.gethostname())}-{url.port}"[:63]
        super().__init__(
            MQTT_TYPE,
            instance,
            {"tls": "1" if url.tls else "0"},
            port=url.port,
            interfaces=interfaces,
            zc=zc,
            what="broker",
        )
        if _is_unicast_ip(url.host):
            self.addresses = (url.host,)
        self.url = url


def open_zeroconf(interfaces: Interfaces = None) -> AsyncZeroconf:
    """An mDNS responder on `interfaces` (None: all), to share among advertisers and browsers (`zc=`)."""
    return AsyncZeroconf(interfaces=list(interfaces) if interfaces else InterfaceChoice.All)


def _advertised_addresses(interfaces: Interfaces) -> tuple[str, ...]:
    """The addresses a service is advertised with: the given interfaces', else this host's address
    on its default route (127.0.0.1 when it has none)."""
    chosen = tuple(i for i in interfaces or () if _is_unicast_ip(i))
    if chosen:
        return chosen
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("224.0.0.251", 5353))  # no packet is sent: this only picks the route
            return (str(probe.getsockname()[0]),)
        except OSError:
            return ("127.0.0.1",)


def _is_unicast_ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (address.is_unspecified or address.is_multicast)


def _label(text: str) -> str:
    """`text` as a host name label: letters, digits and dashes, at most 50 characters."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", text).strip("-")[:50] or "service"


# `device-sdk discover` ----------------------------------------------------------------------


def describe(found: Found) -> str:
    """The details column of the discovery table."""
    if found.device is not None:
        info = found.device
        parts = [info.kind.value, "caps=" + (",".join(c.value for c in info.capabilities) or "-")]
        if info.firmware is not None:
            parts.append(f"fw={info.firmware}")
        if info.room is not None:
            parts.append(f"room={info.room}")
        return " ".join([*parts, f"proto={info.protocol}"])
    if found.gateway is not None:
        return f"broker={found.gateway.broker or '-'} proto={found.gateway.protocol}"
    return f"url={found.broker}"


def table(found: Sequence[Found]) -> list[str]:
    """The discovery table, one line a service, with a header."""
    rows = [("KIND", "NAME", "ADDRESS", "DETAILS")]
    for item in found:
        ident = item.device.device_id if item.device else item.gateway.gateway_id if item.gateway else item.instance
        rows.append((item.kind, ident, f"{','.join(item.addresses)}:{item.port}", describe(item)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]


@dataclass
class _LiveTable:
    """Redraws the table in place on a terminal (ANSI: cursor up, erase below)."""

    out: TextIO
    lines: int = 0

    def draw(self, found: Sequence[Found], status: str) -> None:
        text = [*table(found), status] if found else [status]
        up = f"\x1b[{self.lines}F" if self.lines else ""
        self.out.write(up + "\x1b[J" + "\n".join(text) + "\n")
        self.out.flush()
        self.lines = len(text)


async def run_discover(
    timeout: float = 3.0,
    interfaces: Interfaces = None,
    *,
    as_json: bool = False,
    live: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`device-sdk discover`: browse devices, gateways and brokers for `timeout` seconds, then print
    them: one JSON array, or a table (with `live`, redrawn as services come and go). Services whose
    TXT record does not validate are reported on `err`. Exits 0, also when nothing was found."""
    out = out or sys.stdout
    err = err or sys.stderr
    screen = _LiveTable(out) if live and not as_json else None
    async with Browser(interfaces=interfaces) as browser:
        if screen is not None:
            screen.draw([], f"browsing for {timeout:g} s...")
        async for change in browser.changes(timeout):
            if change.kind is ChangeKind.REFUSED and change.error is not None:
                print(f"skipped {change.name}: {change.error}", file=err)
            if screen is not None:
                screen.draw(_ordered(browser.found.values()), f"browsing for {timeout:g} s...")
        found = _ordered(browser.found.values())
    if as_json:
        print(json.dumps([item.as_dict() for item in found]), file=out)
    elif screen is not None:
        screen.draw(found, f"{len(found)} found")
    elif found:
        print("\n".join(table(found)), file=out)
    if not found:
        print("nothing found", file=err)
    return 0
