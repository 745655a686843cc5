"""BLE without hardware: bumble stacks on virtual controllers that share one `LocalLink`, and a bleak
backend (scanner and client) over a bumble central, so that bleak's own `BleakScanner` and
`BleakClient` drive simulated peripherals:

    radio = VirtualRadio()
    central = await radio.central()
    device = await BleakScanner.find_device_by_name("Lens-01", backend=BumbleScanner, central=central)
    async with BleakClient(device, backend=BumbleClient) as client:
        ...

What the virtual controller does not do (docs/ble.md, "Simulator"): it delivers no scan
responses (a peripheral puts its name and service UUID in the advertising data itself) and cuts
a notification longer than the ATT payload without a warning (the frame protocol never sends one).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Callable
from typing import Any, cast

from bleak.args import SizedBuffer
from bleak.assigned_numbers import CharacteristicPropertyName
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bumble.controller import Controller
from bumble.core import UUID, AdvertisingData
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

log = logging.getLogger(__name__)

DEFAULT_MTU = 247


def bleak_uuid(value: UUID) -> str:
    """A bumble UUID as bleak writes it (lower-case, 128-bit)."""
    return str(uuid.UUID(bytes=value.to_bytes(force_128=True)[::-1]))


class VirtualRadio:
    """One shared link and the stacks on it; each `peripheral` or `central` gets a controller."""

    def __init__(self) -> None:
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self._addresses = itertools.count(1)

    async def stack(self, name: str, address: str | None = None) -> Device:
        """A powered-on bumble device on its own virtual controller (needs a running event loop)."""
        address = address or f"F0:00:00:00:00:{next(self._addresses):02X}"
        controller = Controller(name, link=self.link)
        device = Device(name=name, address=Address(address), host=Host(controller, AsyncPipeSink(controller)))
        await device.power_on()
        return device

    async def central(self, name: str = "gateway") -> Device:
        return await self.stack(name, f"C0:00:00:00:00:{next(self._addresses):02X}")


def _advertisement(adv: Advertisement, service_uuids: list[str]) -> AdvertisementData:
    data = adv.data
    name = data.get(AdvertisingData.COMPLETE_LOCAL_NAME) or data.get(AdvertisingData.SHORTENED_LOCAL_NAME)
    manufacturer: dict[int, bytes] = {}
    specific = data.get(AdvertisingData.MANUFACTURER_SPECIFIC_DATA)
    if isinstance(specific, tuple):
        manufacturer[int(specific[0])] = bytes(specific[1])
    tx = data.get(AdvertisingData.TX_POWER_LEVEL)
    return AdvertisementData(
        local_name=name if isinstance(name, str) else None,
        manufacturer_data=manufacturer,
        service_data={},
        service_uuids=service_uuids,
        tx_power=tx if isinstance(tx, int) else None,
        rssi=adv.rssi,
        platform_data=(adv,),
    )


def _service_uuids(adv: Advertisement) -> list[str]:
    found: list[str] = []
    for kind in (
        AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
        AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
    ):
        for value in adv.data.get_all(kind):
            found.extend(bleak_uuid(u) for u in (value if isinstance(value, list) else [value]))
    return found


class BumbleScanner(BaseBleakScanner):
    """bleak's scanner backend on a bumble central: `BleakScanner(backend=BumbleScanner, central=device)`."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        central: Device,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.central = central
        self._active = scanning_mode != "passive"
        self._scanning = False

    async def start(self) -> None:
        self.seen_devices = {}
        self.central.on(Device.EVENT_ADVERTISEMENT, self._heard)
        await self.central.start_scanning(active=self._active, filter_duplicates=False)
        self._scanning = True  # report advertisements only once start() has returned

    async def stop(self) -> None:
        self._scanning = False
        self.central.remove_listener(Device.EVENT_ADVERTISEMENT, self._heard)
        if self.central.is_scanning:
            await self.central.stop_scanning()

    def _heard(self, adv: Advertisement) -> None:
        if not self._scanning:
            return
        uuids = _service_uuids(adv)
        if not self.is_allowed_uuid(uuids):
            return
        data = _advertisement(adv, uuids)
        address = str(adv.address).split("/")[0]
        device = self.create_or_update_device(address, address, data.local_name, (self.central, adv.address), data)
        self.call_detection_callbacks(device, data)


class BumbleClient(BaseBleakClient):
    """bleak's client backend on a bumble central. Pass a `BLEDevice` from `BumbleScanner` (it carries
    its central), or an address with `central=`. `mtu=` is the ATT MTU asked for at each connect."""

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        central: Device | None = None,
        mtu: int = DEFAULT_MTU,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout)
        self._peer_address: Address | str = self.address
        if isinstance(address_or_ble_device, BLEDevice) and isinstance(address_or_ble_device.details, tuple):
            central, self._peer_address = address_or_ble_device.details
        if central is None:
            raise BleakError("BumbleClient needs a central: a BLEDevice from BumbleScanner, or central=")
        self.central = central
        self.requested_mtu = mtu
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._closing = False

    @property
    def name(self) -> str:
        return self.address

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    @property
    def connection(self) -> Connection | None:
        """The bumble connection (the simulator's own handle, for tests that cut the link)."""
        return self._connection

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if pair:
            log.info("pairing is not simulated; connecting without it")
        async with asyncio.timeout(self._timeout):
            connection = await self.central.connect(self._peer_address)
            self._connection, self._closing = connection, False
            connection.on(Connection.EVENT_DISCONNECTION, self._lost)
            peer = self._peer = Peer(connection)
            await peer.request_mtu(self.requested_mtu)
            await peer.discover_all()  # type: ignore[no-untyped-call]
        self.services = self._collection(peer)

    def _collection(self, peer: Peer) -> BleakGATTServiceCollection:
        services = BleakGATTServiceCollection()
        for proxy in peer.services:
            service = BleakGATTService(proxy, proxy.handle, bleak_uuid(proxy.uuid))
            services.add_service(service)
            for char in proxy.characteristics:
                props = [
                    cast(CharacteristicPropertyName, p.name.lower().replace("_", "-"))
                    for p in type(char.properties)
                    if p in char.properties and p.name
                ]
                characteristic = BleakGATTCharacteristic(
                    char,
                    char.handle,
                    bleak_uuid(char.uuid),
                    props,
                    lambda: self.mtu_size - 3,
                    service,
                )
                services.add_characteristic(characteristic)
                for descriptor in char.descriptors:
                    services.add_descriptor(
                        BleakGATTDescriptor(descriptor, descriptor.handle, bleak_uuid(descriptor.type), characteristic)
                    )
        return services

    def _lost(self, reason: int) -> None:
        self._connection = self._peer = None
        if not self._closing and self._disconnected_callback is not None:
            self._disconnected_callback()

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._closing = True
        await connection.disconnect()
        self._connection = self._peer = None

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise BleakError("pairing is not simulated")

    async def unpair(self) -> None:
        raise BleakError("pairing is not simulated")

    @property
    def peer(self) -> Peer:
        if self._peer is None:
            raise BleakError("not connected")
        return self._peer

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return bytearray(await self.peer.read_value(characteristic.obj))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        return bytearray(await self.peer.read_value(descriptor.obj))

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool) -> None:
        await self.peer.write_value(characteristic.obj, bytes(data), with_response=response)

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: SizedBuffer) -> None:
        await self.peer.write_value(descriptor.obj, bytes(data), with_response=True)

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        await self.peer.subscribe(characteristic.obj, lambda value: callback(bytearray(value)))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        await self.peer.unsubscribe(characteristic.obj)
