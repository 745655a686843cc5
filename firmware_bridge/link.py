"""The gateway's side of a glasses link, on bleak: scan, choose, connect, agree on the protocol,
carry framed messages both ways, and reconnect.

    found = await find_glasses(timeout=5)                  # by service UUID, strongest first
    async with GlassesLink(found[0].device) as link:
        jpeg = await link.capture()
        digest = await link.show(card.payload)
        async for event in link.events():                  # gestures, battery, link state, health
            ...

The same code drives a real adapter (bleak's platform backend) and the simulator (pass
`backend=BumbleClient` and its options). After an unsolicited disconnect the link reconnects with
exponential backoff, and every connect redoes the MTU exchange (the backend's part of connecting),
every subscription and the `hello`; a camera transfer cut off by the disconnect resumes where it
stopped, through the frame protocol's selective retransmit, so the photo arrives byte-identical.
One link per device per process: a second `GlassesLink` to the same address is refused (`busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from device_sdk.bounded import DropOldest
from device_sdk.protocol.errors import BusError, DeviceSdkError, ErrorCode, FrameError, RequestTimeout
from device_sdk.voice.sources import Pcm

from . import gatt
from .flow import Ack, AckStatus, Receiver, Sender
from .frames import DEFAULT_MAX_MESSAGE, MAX_ATT_PAYLOAD, MessageType, Reassembler, encode

log = logging.getLogger(__name__)

_LINKS: dict[str, GlassesLink] = {}
STALL_S = 0.3


@dataclass(frozen=True)
class Found:
    device: BLEDevice
    name: str | None
    rssi: int


async def find_glasses(
    *,
    name: str | None = None,
    timeout: float = 5.0,
    backend: type[BaseBleakScanner] | None = None,
    **options: Any,
) -> list[Found]:
    """Every pair of glasses advertising the service (and `name`, if given) heard within `timeout`
    seconds, strongest signal first; stops early once `name` is heard."""
    found: dict[str, Found] = {}
    heard = asyncio.Event()

    def seen(device: BLEDevice, adv: AdvertisementData) -> None:
        if name is None or adv.local_name == name:
            found[device.address] = Found(device, adv.local_name, adv.rssi)
            if name is not None:
                heard.set()

    scanner = BleakScanner(seen, service_uuids=[gatt.SERVICE_UUID], backend=backend, **options)
    async with scanner:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await heard.wait()
    return sorted(found.values(), key=lambda f: -f.rssi)


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: `initial`, times `factor` after each failure, at most `maximum` seconds."""

    initial: float = 0.05
    factor: float = 2.0
    maximum: float = 10.0


@dataclass(frozen=True)
class Connected:
    address: str
    version: int
    limits: gatt.Limits
    reconnect: bool
    """False for the first connection, True after a loss."""


@dataclass(frozen=True)
class Disconnected:
    address: str
    reconnecting: bool


@dataclass(frozen=True)
class Health:
    """Link health, every `health_every` seconds while connected."""

    address: str
    rssi: int | None
    """From the last advertisement heard (a connected link has no other on every platform)."""
    att_payload: int
    bytes_in: int
    bytes_out: int
    throughput_in: float
    """Bytes per second received over the last interval."""
    retransmits_asked: int
    """Chunks the gateway asked the glasses for again."""
    retransmits_sent: int
    """Chunks the gateway sent again."""
    reconnects: int


LinkEvent = Connected | Disconnected | Health | gatt.Input | gatt.Battery | gatt.Shown | gatt.DeviceFault


class GlassesLink:
    def __init__(
        self,
        device: BLEDevice | str,
        *,
        backend: type[BaseBleakClient] | None = None,
        options: dict[str, Any] | None = None,
        window: int = 32,
        max_message: int = DEFAULT_MAX_MESSAGE,
        backoff: Backoff | None = None,
        health_every: float = 1.0,
        hello_timeout: float = 5.0,
        rssi: int | None = None,
    ) -> None:
        self.device = device
        self.address = device.address if isinstance(device, BLEDevice) else device
        self.backend, self.options = backend, options or {}
        self.own = gatt.Limits(att_payload=MAX_ATT_PAYLOAD, window=window, max_message=max_message)
        self.backoff = backoff or Backoff()
        self.health_every, self.hello_timeout, self.rssi = health_every, hello_timeout, rssi
        self.client: BleakClient | None = None
        self.limits: gatt.Limits | None = None
        self.version: int | None = None
        self.reconnects = 0
        self.bytes_in = self.bytes_out = self.retransmits_asked = 0
        self.frames_out = 0
        """GATT writes made, of every kind."""
        self._closing = False
        self._welcome: asyncio.Future[gatt.Welcome] | None = None
        self._ready = asyncio.Event()
        self._events: DropOldest[LinkEvent] = DropOldest(1000)
        self._audio: DropOldest[Pcm] = DropOldest(600)
        self._inbound: dict[str, Reassembler] = {}
        self._camera: Receiver | None = None
        self._photo: asyncio.Future[bytes] | None = None
        self._display: Sender | None = None
        self._display_progress = 0
        self._shown: dict[str, asyncio.Future[None]] = {}
        self._control_seq = -1
        self._writes: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()

    # lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> GlassesLink:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect once (errors propagate); later losses reconnect by themselves."""
        if _LINKS.get(self.address, self) is not self:
            raise BusError(f"{self.address} already has a link in this process", ErrorCode.BUSY)
        _LINKS[self.address] = self
        self._closing = False
        self._spawn(self._writer())
        try:
            await self._open(reconnect=False)
        except BaseException:
            await self.close()
            raise
        if self.health_every > 0:
            self._spawn(self._health())

    async def close(self) -> None:
        self._closing = True
        if _LINKS.get(self.address) is self:
            del _LINKS[self.address]
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            with contextlib.suppress(BleakError, OSError, TimeoutError):
                async with asyncio.timeout(self.hello_timeout):
                    await self.client.disconnect()
        self._events.close()
        self._audio.close()

    @property
    def connected(self) -> bool:
        return self._ready.is_set()

    async def _open(self, *, reconnect: bool) -> None:
        client = self.client = BleakClient(
            self.device, self._lost, backend=self.backend, timeout=self.hello_timeout, **self.options
        )
        await client.connect()
        att = client.mtu_size - 3
        display = client.services.get_characteristic(gatt.DISPLAY_UUID)
        if display is None:
            await client.disconnect()
            raise FrameError(f"{self.address} does not have the glasses service", ErrorCode.UNKNOWN_TYPE)
        att = max(att, display.max_write_without_response_size)  # BlueZ reports MTU 23 whatever it is
        for uuid in (gatt.EVENTS_UUID, gatt.AUDIO_UUID, gatt.CAMERA_UUID):
            await client.start_notify(uuid, self._listener(uuid))
        self._welcome = asyncio.get_running_loop().create_future()
        offer = self.own.model_copy(update={"att_payload": min(self.own.att_payload, att)})
        self._inbound[gatt.EVENTS_UUID] = gatt.hello_reassembler()
        hello = gatt.Hello(versions=list(gatt.SUPPORTED_VERSIONS), limits=offer)
        await self._write_now(gatt.CONTROL_UUID, self._control(hello.encode(), gatt.HELLO_ATT_PAYLOAD))
        try:
            try:
                async with asyncio.timeout(self.hello_timeout):
                    welcome = await self._welcome
            except TimeoutError:
                raise RequestTimeout(f"{self.address} did not answer hello within {self.hello_timeout} s") from None
            self._agree(welcome)
        except BaseException:  # no session agreed: leave no half-open connection behind
            with contextlib.suppress(BleakError, OSError, TimeoutError):
                await client.disconnect()
            raise
        self._ready.set()
        self._events.put(Connected(self.address, welcome.version, welcome.limits, reconnect))
        if self._camera is not None and self._camera.reassembler.progress() is not None:
            ack = self._camera.ack()  # a photo was cut off: say at once what is missing
            if ack is not None:
                self._ack_camera(ack)
        if self._display is not None and not self._display.done:
            self._queue(gatt.DISPLAY_UUID, self._display.stalled(), response=False)

    def _agree(self, welcome: gatt.Welcome) -> None:
        limits = welcome.limits
        if welcome.version not in gatt.SUPPORTED_VERSIONS or limits.common(self.own) != limits:
            raise FrameError(
                f"the glasses chose version {welcome.version} with {limits}", ErrorCode.UNSUPPORTED_VERSION
            )
        changed = self.limits is None or self.limits.att_payload != limits.att_payload
        self.version, self.limits = welcome.version, limits
        att = limits.att_payload
        self._inbound[gatt.EVENTS_UUID] = Reassembler(att, max_message=gatt.MAX_CONTROL)
        if changed:  # frames of another size: transfers start over
            self._inbound[gatt.AUDIO_UUID] = Reassembler(att, max_message=64 * 1024)
            self._camera = Receiver(att, window=limits.window, max_message=limits.max_message)

    def _lost(self, client: BleakClient) -> None:
        if self._closing or client is not self.client:
            return
        self._ready.clear()
        self._events.put(Disconnected(self.address, reconnecting=True))
        log.warning("glasses %s: link lost, reconnecting", self.address)
        self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        delay = self.backoff.initial
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                await self._open(reconnect=True)
                self.reconnects += 1
                return
            except (BleakError, DeviceSdkError, OSError, TimeoutError) as exc:
                log.info("glasses %s: reconnect failed (%s); next try in %.2f s", self.address, exc, delay)
                delay = min(delay * self.backoff.factor, self.backoff.maximum)

    # what the gateway asks -------------------------------------------------------------------

    async def capture(self, timeout: float = 15.0) -> bytes:
        """A photo from the glasses' camera, as the JPEG bytes they sent (the same across a reconnect)."""
        await self._wait_ready(timeout)
        self._photo = asyncio.get_running_loop().create_future()
        await self.command(gatt.Capture())
        try:
            async with asyncio.timeout(timeout):
                return await self._photo
        except TimeoutError:
            raise RequestTimeout(f"no photo from {self.address} within {timeout} s") from None

    async def show(self, payload: bytes, timeout: float = 10.0) -> str:
        """Put a card on the lens; return its digest once the glasses say they show exactly it."""
        limits = await self._wait_ready(timeout)
        digest = hashlib.sha256(payload).hexdigest()
        shown = self._shown[digest] = asyncio.get_running_loop().create_future()
        sender = self._display
        if sender is None or sender.att_payload != limits.att_payload:  # one count of messages per link
            sender = self._display = Sender(limits.att_payload, window=limits.window)
        self._queue(gatt.DISPLAY_UUID, sender.send(MessageType.DISPLAY, payload), response=False)
        watch = asyncio.create_task(self._watch_display(sender))
        try:
            async with asyncio.timeout(timeout):
                await shown
        except TimeoutError:
            raise RequestTimeout(f"{self.address} did not show the card within {timeout} s") from None
        finally:
            watch.cancel()
            self._shown.pop(digest, None)
        return digest

    async def command(self, command: gatt.Capture | gatt.Mic | gatt.Clear) -> None:
        limits = await self._wait_ready(self.hello_timeout)
        self._queue(gatt.CONTROL_UUID, self._control(command.encode(), limits.att_payload), response=True)

    async def read_battery(self) -> int:
        await self._wait_ready(self.hello_timeout)
        assert self.client is not None
        return (await self.client.read_gatt_char(gatt.BATTERY_LEVEL_UUID))[0]

    async def read_firmware(self) -> str:
        await self._wait_ready(self.hello_timeout)
        assert self.client is not None
        return (await self.client.read_gatt_char(gatt.FIRMWARE_REVISION_UUID)).decode()

    def events(self) -> AsyncIterator[LinkEvent]:
        """Gestures, battery, cards shown, faults, link state and health; the last 1,000 are kept."""
        return self._events

    async def audio(self) -> AsyncIterator[Pcm]:
        """The microphone, 16 kHz s16le mono, while it is open (`command(Mic(on=True))`); offsets
        count samples since it opened, so audio lost with the link leaves a gap."""
        async for pcm in self._audio:
            yield pcm

    async def _wait_ready(self, timeout: float) -> gatt.Limits:
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            raise BusError(f"no link to {self.address}", ErrorCode.NOT_CONNECTED) from None
        assert self.limits is not None
        return self.limits

    # frames ------------------------------------------------------------------------------------

    def _control(self, payload: bytes, att: int, type: MessageType = MessageType.CONTROL) -> list[bytes]:
        self._control_seq = (self._control_seq + 1) & 0xFFFF
        return encode(type, self._control_seq, payload, att)

    def _listener(self, uuid: str) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
        return lambda _characteristic, data: self._on_frame(uuid, bytes(data))

    def _on_frame(self, uuid: str, frame: bytes) -> None:
        self.bytes_in += len(frame)
        now = asyncio.get_running_loop().time()
        try:
            if uuid == gatt.CAMERA_UUID:
                self._on_camera(frame, now)
                return
            reassembler = self._inbound.get(uuid)
            message = reassembler.feed(frame, now) if reassembler is not None else None
            if message is None:
                return
            if message.type not in gatt.CHANNEL_TYPES[uuid]:
                raise FrameError(f"a {message.type.name} message on {uuid}", ErrorCode.UNKNOWN_TYPE)
            if message.type is MessageType.AUDIO:
                offset, pcm = gatt.split_audio(message.payload)
                self._audio.put(Pcm(offset, pcm))
            elif message.type is MessageType.ACK:
                self._display_ack(Ack.decode(message.payload))
            else:
                self._on_event(gatt.decode_event(message.payload))
        except FrameError as exc:
            log.warning("glasses %s: dropped a frame on %s: %s", self.address, uuid, exc)
        except Exception:  # bleak's callback is no place for an exception: a bug here drops the frame, loudly
            log.exception("glasses %s: dropped a frame on %s that the bridge could not handle", self.address, uuid)

    def _on_event(self, event: gatt.Welcome | gatt.Shown | gatt.Input | gatt.Battery | gatt.DeviceFault) -> None:
        waiting = self._welcome if self._welcome is not None and not self._welcome.done() else None
        if isinstance(event, gatt.Welcome):
            if waiting is not None:
                waiting.set_result(event)
            return
        if waiting is not None and isinstance(event, gatt.DeviceFault) and event.code == ErrorCode.UNSUPPORTED_VERSION:
            waiting.set_exception(FrameError(event.text, ErrorCode.UNSUPPORTED_VERSION))
        if isinstance(event, gatt.Shown) and event.digest in self._shown:
            future = self._shown[event.digest]
            if not future.done():
                future.set_result(None)
        self._events.put(event)

    def _on_camera(self, frame: bytes, now: float) -> None:
        camera = self._camera
        if camera is None:
            return
        message, ack = camera.feed(frame, now)
        if ack is not None:
            self._ack_camera(ack)
        if message is not None and message.type is not MessageType.IMAGE:
            raise FrameError(f"a {message.type.name} message on the camera characteristic", ErrorCode.UNKNOWN_TYPE)
        if message is not None and self._photo is not None and not self._photo.done():
            self._photo.set_result(message.payload)

    def _ack_camera(self, ack: Ack) -> None:
        self.retransmits_asked += sum(count for _first, count in ack.missing)
        if self.limits is not None:
            self._queue(gatt.CONTROL_UUID, self._control(ack.encode(), self.limits.att_payload, MessageType.ACK), True)

    def _display_ack(self, ack: Ack) -> None:
        sender = self._display
        if sender is None:
            return
        try:
            frames = sender.on_ack(ack)
        except FrameError:
            log.warning("glasses %s: the card arrived corrupted; sending it again", self.address)
            return
        self._display_progress += 1
        if ack.status is not AckStatus.COMPLETE:
            self._queue(gatt.DISPLAY_UUID, frames, response=False)

    async def _watch_display(self, sender: Sender) -> None:
        while not sender.done:
            seen = self._display_progress
            await asyncio.sleep(STALL_S)
            if seen == self._display_progress and self.connected:
                self._queue(gatt.DISPLAY_UUID, sender.stalled(), response=False)

    def _queue(self, uuid: str, frames: list[bytes], response: bool) -> None:
        for frame in frames:
            self._writes.put_nowait((uuid, frame, response))

    async def _write_now(self, uuid: str, frames: list[bytes]) -> None:
        assert self.client is not None
        for frame in frames:
            await self.client.write_gatt_char(uuid, frame, response=True)
            self.bytes_out += len(frame)
            self.frames_out += 1

    async def _writer(self) -> None:
        """Writes go out in order, one at a time; a write while the link is down is lost (the
        frame protocol asks for what it lacks once the link is back)."""
        while True:
            uuid, frame, response = await self._writes.get()
            client = self.client
            if client is None or not self._ready.is_set():
                continue
            try:
                await client.write_gatt_char(uuid, frame, response=response)
                self.bytes_out += len(frame)
                self.frames_out += 1
            except (BleakError, OSError, TimeoutError) as exc:
                log.debug("glasses %s: a write was lost: %s", self.address, exc)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the BLE stack swallowed our cancellation
                raise asyncio.CancelledError

    async def _health(self) -> None:
        last = self.bytes_in
        while True:
            await asyncio.sleep(self.health_every)
            if not self.connected or self.limits is None:
                continue
            rate = (self.bytes_in - last) / self.health_every
            last = self.bytes_in
            resent = self._display.retransmitted if self._display is not None else 0
            self._events.put(
                Health(
                    self.address,
                    self.rssi,
                    self.limits.att_payload,
                    self.bytes_in,
                    self.bytes_out,
                    rate,
                    self.retransmits_asked,
                    resent,
                    self.reconnects,
                )
            )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
