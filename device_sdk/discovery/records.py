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

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from device_sdk.bus.url import BrokerUrl
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode, ProtocolError
from device_sdk.protocol.fields import PROTOCOL_VERSION, Capability
from device_sdk.protocol.messages import DeviceInfo
from device_sdk.protocol.topics import check_id
from device_sdk.protocol.wire_errors import first_error

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


_CAPABILITY = re.compile(r"^[a-z0-9_]{1,32}$")
_KNOWN_CAPABILITIES = {c.value for c in Capability}
_TRUE = {"1", "true", "yes", "on"}


Interfaces = Sequence[str] | None
"""Addresses of the interfaces to use (`["127.0.0.1"]`), or None for all of them."""


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
    if info.public_key is not None:
        txt["pk"] = info.public_key
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
    for key, name in (("kind", "kind"), ("fw", "firmware"), ("room", "room"), ("pk", "public_key")):
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
