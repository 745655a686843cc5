"""Simulated AI glasses: a bumble GATT peripheral with the profile in `firmware_bridge.gatt`.

The glasses have a camera (product photos drawn with Pillow, `photos.py`), a microphone (PCM you
give them, streamed while the gateway has it open), a 640x400 display (the card a display message
carries, drawn with `device_sdk.consent.lens`), tap, double tap, swipe and head-nod input, a battery and a
Device Information service. Everything crosses the virtual link in frames, exactly as firmware
would send them; `drop_link_after` cuts the link in the middle of a camera transfer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service
from bumble.profiles.battery_service import BatteryService
from bumble.profiles.device_information_service import DeviceInformationService
from PIL import Image

from device_sdk.consent.lens import LENS_SIZE, render_card
from device_sdk.consent.readback import display_digest
from device_sdk.protocol.errors import ErrorCode, FrameError
from firmware_bridge import gatt
from firmware_bridge.flow import Ack, Receiver, Sender
from firmware_bridge.frames import DEFAULT_MAX_MESSAGE, Message, MessageType, Reassembler, encode

from .ble_radio import VirtualRadio
from .photos import product_photo

log = logging.getLogger(__name__)

FIRMWARE = "simglass-1.0"
AUDIO_BLOCK = 3200
"""100 ms of 16 kHz s16le mono per audio message."""
STALL_S = 0.3


class SimulatedGlasses:
    """`async with SimulatedGlasses(radio, "Lens-01") as glasses:` advertises until a gateway connects
    (and again after every disconnect)."""

    def __init__(
        self,
        radio: VirtualRadio,
        name: str = "Lens-01",
        *,
        device_id: str = "glasses-1",
        address: str | None = None,
        photo: Callable[[], bytes] | None = None,
        battery: int = 87,
        window: int = 32,
        max_message: int = DEFAULT_MAX_MESSAGE,
        versions: tuple[int, ...] = gatt.SUPPORTED_VERSIONS,
    ) -> None:
        if len(name.encode()) > 8:
            raise ValueError("a name of at most 8 bytes: name and 128-bit UUID share 31 bytes of advertising")
        self.radio, self.name, self.device_id, self.address = radio, name, device_id, address
        self.photo = photo or (lambda: product_photo("bat-aa-4", "AA batteries, 4 pack"))
        self.battery = battery
        self.versions = versions
        self.own = gatt.Limits(att_payload=244, window=window, max_message=max_message)
        self.limits: gatt.Limits | None = None
        self.shown: str | None = None
        """The card on the lens (None: blank)."""
        self.screen: Image.Image = Image.new("RGB", LENS_SIZE, "black")
        self.photos_sent: list[bytes] = []
        self.frames_sent = 0
        """Notifications sent, of every kind."""
        self.camera_frames_last = 0
        """Camera frames the last photo took, resends included."""
        self.connections = 0
        self.mic_open = False
        self._device: Device | None = None
        self._connection: Connection | None = None
        self._control = gatt.hello_reassembler()
        self._display: Receiver | None = None
        self._camera: Sender | None = None
        self._camera_progress = 0
        self._seq = {gatt.EVENTS_UUID: -1, gatt.AUDIO_UUID: -1}
        self._out: asyncio.Queue[tuple[Characteristic[Any], bytes]] = asyncio.Queue()
        self._drop_after: int | None = None
        self._mic_offset = 0
        self._mic: asyncio.Queue[bytes] = asyncio.Queue()
        self._welcomed = asyncio.Event()
        self._mic_opened = asyncio.Event()
        self._card = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    # lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> SimulatedGlasses:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        device = self._device = await self.radio.stack(self.name, self.address)
        self.address = str(device.public_address).split("/")[0] if self.address is None else self.address
        props, readable, writeable = Characteristic.Properties, Characteristic.READABLE, Characteristic.WRITEABLE
        control = CharacteristicValue[bytes](write=self._on_control)
        display = CharacteristicValue[bytes](write=self._on_display)
        chars: dict[str, Characteristic[bytes]] = {
            gatt.CONTROL_UUID: Characteristic(gatt.CONTROL_UUID, props.WRITE, writeable, control),
            gatt.EVENTS_UUID: Characteristic(gatt.EVENTS_UUID, props.NOTIFY, readable, b""),
            gatt.AUDIO_UUID: Characteristic(gatt.AUDIO_UUID, props.NOTIFY, readable, b""),
            gatt.CAMERA_UUID: Characteristic(gatt.CAMERA_UUID, props.NOTIFY, readable, b""),
            gatt.DISPLAY_UUID: Characteristic(gatt.DISPLAY_UUID, props.WRITE_WITHOUT_RESPONSE, writeable, display),
        }
        self._chars = chars
        device.add_service(Service(gatt.SERVICE_UUID, list(chars.values())))
        device.add_service(BatteryService(lambda _connection: self.battery))
        device.add_service(
            DeviceInformationService(
                manufacturer_name="device-sdk", model_number="SimGlass", firmware_revision=FIRMWARE
            )
        )
        device.on(Device.EVENT_CONNECTION, self._on_connection)
        device.advertising_data = bytes(
            AdvertisingData(
                [
                    (AdvertisingData.FLAGS, bytes([0x06])),
                    (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
                    (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, bytes(UUID(gatt.SERVICE_UUID))),
                ]
            )
        )
        self._tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._stream_mic())]
        await device.start_advertising(auto_restart=True, advertising_interval_min=20, advertising_interval_max=20)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._device is not None:
            with contextlib.suppress(Exception):
                await self._device.power_off()

    def _on_connection(self, connection: Connection) -> None:
        self._connection = connection
        self.connections += 1
        self.limits = None
        self._control = gatt.hello_reassembler()
        self._welcomed.clear()
        connection.on(Connection.EVENT_DISCONNECTION, lambda reason: self._lost(connection))

    def _lost(self, connection: Connection) -> None:
        if self._connection is connection:
            self._connection = None
        self.mic_open = False
        self._mic_opened.clear()
        while not self._out.empty():  # what was queued for the old connection is gone with it
            self._out.get_nowait()

    @property
    def connected(self) -> bool:
        return self._connection is not None

    # the wearer ----------------------------------------------------------------------------

    async def gesture(self, gesture: gatt.Gesture) -> None:
        """The wearer taps, double-taps, swipes or nods: an input event with the card on the lens."""
        self._event(gatt.Input(gesture=gesture, digest=self.shown))

    def hear(self, pcm: bytes) -> None:
        """Queue what the microphone hears (16 kHz s16le mono); it streams while the mic is open."""
        self._mic.put_nowait(pcm)

    async def speak(self, pcm: bytes, timeout: float = 10.0) -> None:
        """The wearer speaks once the gateway opens the microphone (a second of silence after)."""
        async with asyncio.timeout(timeout):
            await self._mic_opened.wait()
        self.hear(pcm + bytes(2 * gatt.AUDIO_RATE))

    async def wait_card(self, timeout: float = 10.0) -> str:
        """The digest of the next card the lens shows."""
        self._card.clear()
        async with asyncio.timeout(timeout):
            await self._card.wait()
        assert self.shown is not None
        return self.shown

    async def set_battery(self, level: int) -> None:
        self.battery = level
        self._event(gatt.Battery(level=level))

    def drop_link_after(self, camera_frames: int) -> None:
        """Cut the link once this many camera frames of the next photo have gone out."""
        self._drop_after = camera_frames

    async def wait_welcomed(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self._welcomed.wait()

    # gateway -> glasses ----------------------------------------------------------------------

    def _on_control(self, connection: Connection, value: bytes) -> None:
        try:
            message = self._control.feed(bytes(value), asyncio.get_running_loop().time())
            if message is None:
                return
            if message.type is MessageType.ACK:
                self._camera_ack(Ack.decode(message.payload))
            elif message.type is MessageType.CONTROL:
                self._command(gatt.decode_control(message.payload))
            else:
                raise FrameError(f"a {message.type.name} message on the control characteristic", ErrorCode.UNKNOWN_TYPE)
        except FrameError as exc:
            log.warning("glasses: refused a control frame: %s", exc)
            self._event(gatt.DeviceFault(code=exc.code, text=exc.text[:512]))
        except Exception:  # never into the BLE stack's callback: the gateway hears an error event
            log.exception("glasses: a control frame the simulator could not handle")
            self._event(gatt.DeviceFault(code=ErrorCode.INTERNAL, text="a control frame the glasses could not handle"))

    def _command(self, command: gatt.Hello | gatt.Capture | gatt.Mic | gatt.Clear) -> None:
        if isinstance(command, gatt.Hello):
            version = gatt.choose_version(command.versions, self.versions)  # else an error event says why
            own = self.own.model_copy(update={"att_payload": min(self.own.att_payload, self._att_mtu() - 3)})
            limits = self.limits = own.common(command.limits)
            self._control = Reassembler(limits.att_payload, max_message=gatt.MAX_CONTROL)
            if self._display is None or self._display.reassembler.att_payload != limits.att_payload:
                self._display = Receiver(limits.att_payload, window=limits.window, max_message=limits.max_message)
            welcome = gatt.Welcome(
                version=version, limits=limits, device_id=self.device_id, firmware=FIRMWARE, display=LENS_SIZE
            )
            self._spawn(self._welcome(welcome))
        elif isinstance(command, gatt.Capture):
            self._spawn(self._capture())
        elif isinstance(command, gatt.Mic):
            self.mic_open = command.on
            if command.on:
                self._mic_offset = 0
                self._mic_opened.set()
            else:
                self._mic_opened.clear()
        else:
            self._show(None)

    async def _welcome(self, welcome: gatt.Welcome) -> None:
        self._event(welcome)
        self._welcomed.set()
        sender = self._camera
        if sender is not None and not sender.done:
            if sender.att_payload != welcome.limits.att_payload:  # frames of the old size: start the photo again
                self._spawn(self._capture(self.photos_sent[-1]))
            else:  # a photo was cut off: probe, and the gateway's ack names what it lacks
                self._notify_all(gatt.CAMERA_UUID, sender.stalled())

    def _on_display(self, connection: Connection, value: bytes) -> None:
        receiver = self._display
        if receiver is None:
            return
        try:
            message, ack = receiver.feed(bytes(value), asyncio.get_running_loop().time())
        except FrameError as exc:
            log.warning("glasses: refused a display frame: %s", exc)
            return
        if ack is not None:
            self._notify_message(gatt.EVENTS_UUID, MessageType.ACK, ack.encode())
        if message is not None and message.type is MessageType.DISPLAY:
            self._show(message)

    def _show(self, message: Message | None) -> None:
        if message is None:
            self.shown, self.screen = None, Image.new("RGB", LENS_SIZE, "black")
            return
        try:
            self.screen = render_card(message.payload.decode(), LENS_SIZE)
        except (UnicodeDecodeError, ValueError) as exc:
            self._event(gatt.DeviceFault(code="bad_message", text=f"cannot draw that card: {exc}"))
            return
        self.shown = display_digest(message.payload.decode())
        self._card.set()
        self._event(gatt.Shown(digest=self.shown))

    # glasses -> gateway ----------------------------------------------------------------------

    async def _capture(self, jpeg: bytes | None = None) -> None:
        if self.limits is None:
            return
        jpeg = jpeg if jpeg is not None else await asyncio.to_thread(self.photo)
        if not self.photos_sent or jpeg is not self.photos_sent[-1]:
            self.photos_sent.append(jpeg)
        sender = self._camera
        if sender is None or sender.att_payload != self.limits.att_payload:
            sender = self._camera = Sender(self.limits.att_payload, window=self.limits.window)
        self._camera_progress = self.camera_frames_last = 0
        self._notify_all(gatt.CAMERA_UUID, sender.send(MessageType.IMAGE, jpeg))
        self._spawn(self._watch_camera(sender))

    def _camera_ack(self, ack: Ack) -> None:
        sender = self._camera
        if sender is None:
            return
        try:
            frames = sender.on_ack(ack)
        except FrameError:  # refused: the photo arrived corrupted; send it whole again
            self._spawn(self._capture(self.photos_sent[-1]))
            return
        self._camera_progress += 1
        self._notify_all(gatt.CAMERA_UUID, frames)

    async def _watch_camera(self, sender: Sender) -> None:
        """Probe a transfer that stopped hearing acks (a lost ack, or the link cut)."""
        while not sender.done and sender is self._camera:
            seen = self._camera_progress
            await asyncio.sleep(STALL_S)
            if seen == self._camera_progress and self.connected and self._welcomed.is_set():
                self._notify_all(gatt.CAMERA_UUID, sender.stalled())

    async def _stream_mic(self) -> None:
        pending = b""
        while True:
            pending += await self._mic.get()
            while len(pending) >= AUDIO_BLOCK or (pending and self._mic.empty()):
                block, pending = pending[:AUDIO_BLOCK], pending[AUDIO_BLOCK:]
                if self.mic_open and self.connected:
                    self._notify_message(
                        gatt.AUDIO_UUID, MessageType.AUDIO, gatt.audio_message(self._mic_offset, block)
                    )
                    await asyncio.sleep(0)
                self._mic_offset += len(block) // 2

    def _event(self, event: Any) -> None:
        self._notify_message(gatt.EVENTS_UUID, MessageType.EVENT, event.encode(), hello=isinstance(event, gatt.Welcome))

    def _notify_message(self, uuid: str, type: MessageType, payload: bytes, *, hello: bool = False) -> None:
        """A message framed at the agreed ATT payload (the hello answer, and anything before it, at
        the least one)."""
        att = self.limits.att_payload if self.limits is not None and not hello else gatt.HELLO_ATT_PAYLOAD
        self._seq[uuid] = (self._seq[uuid] + 1) & 0xFFFF
        self._notify_all(uuid, encode(type, self._seq[uuid], payload, att))

    def _notify_all(self, uuid: str, frames: list[bytes]) -> None:
        for frame in frames:
            self._out.put_nowait((self._chars[uuid], frame))

    async def _pump(self) -> None:
        """Every notification goes out in order, one at a time, as a radio would send them."""
        device = self._device
        assert device is not None
        while True:
            characteristic, frame = await self._out.get()
            connection = self._connection
            if connection is None:
                continue
            if characteristic is self._chars[gatt.CAMERA_UUID] and self._drop_after is not None:
                if self._drop_after == 0:
                    self._drop_after = None
                    self._lost(connection)
                    with contextlib.suppress(Exception):
                        await connection.disconnect()
                    continue
                self._drop_after -= 1
            with contextlib.suppress(Exception):  # the link went down under us: the frame is lost
                await device.notify_subscriber(connection, characteristic, frame)
                self.frames_sent += 1
                if characteristic is self._chars[gatt.CAMERA_UUID]:
                    self.camera_frames_last += 1

    def _att_mtu(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
