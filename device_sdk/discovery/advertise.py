"""Advertising on the LAN: a device, a gateway or a broker as a DNS-SD service whose TXT record
says what it is, with name conflicts detected and refused."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import replace
from typing import Self

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
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from device_sdk.bus.url import BrokerUrl
from device_sdk.protocol.errors import BusError, ConfigError
from device_sdk.protocol.messages import DeviceInfo

from .records import (
    DEVICE_TYPE,
    GATEWAY_TYPE,
    MQTT_TYPE,
    TTL,
    GatewayInfo,
    Interfaces,
    device_txt,
    gateway_txt,
)

log = logging.getLogger(__name__)
_TYPE_SRV = 33
_CLASS_IN = 1
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


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
