"""The glasses' GATT profile and the messages of a link session (docs/ble.md, "GATT profile").

One primary service with five characteristics, each carrying frames (`frames.py`) of the message
types it is for, plus the standard Battery (0x180F) and Device Information (0x180A) services:

| characteristic | properties | direction | messages |
|---|---|---|---|
| control | write (with response) | gateway -> glasses | control (JSON), acks of camera messages |
| events | notify | glasses -> gateway | events (JSON), acks of display messages |
| audio | notify | glasses -> gateway | audio: u32 sample offset, then 16 kHz s16le mono PCM |
| camera | notify | glasses -> gateway | image: one JPEG per message, flow-controlled |
| display | write without response | gateway -> glasses | display: the lens card, UTF-8, flow-controlled |

A session starts with `hello` both ways: the gateway offers the protocol versions it speaks and
its limits, the glasses answer with the version chosen and the limits both keep (the smaller of
each), or an `error` event with code `unsupported_version`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import ErrorCode, FrameError

from .frames import (
    DEFAULT_MAX_MESSAGE,
    MAX_ATT_PAYLOAD,
    MIN_ATT_PAYLOAD,
    PROTOCOL_VERSION,
    MessageType,
    Reassembler,
)

SERVICE_UUID = "6e4b0001-7c1a-4f3e-9a52-2d8b1c0e5f10"
CONTROL_UUID = "6e4b0002-7c1a-4f3e-9a52-2d8b1c0e5f10"
EVENTS_UUID = "6e4b0003-7c1a-4f3e-9a52-2d8b1c0e5f10"
AUDIO_UUID = "6e4b0004-7c1a-4f3e-9a52-2d8b1c0e5f10"
CAMERA_UUID = "6e4b0005-7c1a-4f3e-9a52-2d8b1c0e5f10"
DISPLAY_UUID = "6e4b0006-7c1a-4f3e-9a52-2d8b1c0e5f10"
BATTERY_SERVICE_UUID = "0000180f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL_UUID = "00002a19-0000-1000-8000-00805f9b34fb"
DEVICE_INFO_SERVICE_UUID = "0000180a-0000-1000-8000-00805f9b34fb"
FIRMWARE_REVISION_UUID = "00002a26-0000-1000-8000-00805f9b34fb"

SUPPORTED_VERSIONS = (PROTOCOL_VERSION,)
HELLO_ATT_PAYLOAD = MIN_ATT_PAYLOAD
"""`hello` and its answer are framed for the least ATT MTU (23): nothing is agreed yet."""
MAX_CONTROL = 4096
"""Control and event messages are small JSON objects."""
AUDIO_RATE = 16_000
AUDIO_HEADER = 4
"""An audio message: u32 little-endian offset in samples since the microphone opened, then PCM."""

CHANNEL_TYPES: dict[str, frozenset[MessageType]] = {
    CONTROL_UUID: frozenset({MessageType.CONTROL, MessageType.ACK}),
    EVENTS_UUID: frozenset({MessageType.EVENT, MessageType.ACK}),
    AUDIO_UUID: frozenset({MessageType.AUDIO}),
    CAMERA_UUID: frozenset({MessageType.IMAGE}),
    DISPLAY_UUID: frozenset({MessageType.DISPLAY}),
}
"""Which message types each characteristic carries; anything else on it is `unknown_type`."""


class Gesture(StrEnum):
    TAP = "tap"
    DOUBLE_TAP = "double_tap"
    NOD = "nod"
    SWIPE = "swipe"


CONFIRM_GESTURES = frozenset({Gesture.TAP, Gesture.NOD})
CANCEL_GESTURES = frozenset({Gesture.SWIPE, Gesture.DOUBLE_TAP})


class _Json(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


class Limits(_Json):
    att_payload: int = Field(ge=MIN_ATT_PAYLOAD, le=MAX_ATT_PAYLOAD)
    window: int = Field(ge=2, le=1024)
    max_message: int = Field(ge=1024, le=16 * DEFAULT_MAX_MESSAGE)

    def common(self, other: Limits) -> Limits:
        """The smaller of each limit: what both sides keep to."""
        return Limits(
            att_payload=min(self.att_payload, other.att_payload),
            window=min(self.window, other.window),
            max_message=min(self.max_message, other.max_message),
        )


# gateway -> glasses (control characteristic)


class Hello(_Json):
    op: Literal["hello"] = "hello"
    versions: list[int] = Field(min_length=1, max_length=16)
    limits: Limits


class Capture(_Json):
    """Take a photo; it comes as the next image message on the camera characteristic."""

    op: Literal["capture"] = "capture"


class Mic(_Json):
    op: Literal["mic"] = "mic"
    on: bool


class Clear(_Json):
    """Blank the lens."""

    op: Literal["clear"] = "clear"


Control = Annotated[Hello | Capture | Mic | Clear, Field(discriminator="op")]

# glasses -> gateway (events characteristic)

Digest = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Welcome(_Json):
    """The glasses' answer to `hello`: the version chosen and the limits both keep."""

    ev: Literal["hello"] = "hello"
    version: int
    limits: Limits
    device_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    firmware: Annotated[str, Field(max_length=64)]
    display: tuple[int, int] = (640, 400)


class Shown(_Json):
    """The lens shows a card now: the SHA-256 of the display message's payload."""

    ev: Literal["shown"] = "shown"
    digest: Digest


class Input(_Json):
    """The wearer's gesture, with the digest of the card on the lens at that moment (None: blank)."""

    ev: Literal["input"] = "input"
    gesture: Gesture
    digest: Digest | None = None


class Battery(_Json):
    ev: Literal["battery"] = "battery"
    level: int = Field(ge=0, le=100)


class DeviceFault(_Json):
    """The glasses refused something, with a code from `ErrorCode`."""

    ev: Literal["error"] = "error"
    code: str = Field(max_length=64)
    text: str = Field(max_length=512)


Event = Annotated[Welcome | Shown | Input | Battery | DeviceFault, Field(discriminator="ev")]

_CONTROL: TypeAdapter[Hello | Capture | Mic | Clear] = TypeAdapter(Control)
_EVENT: TypeAdapter[Welcome | Shown | Input | Battery | DeviceFault] = TypeAdapter(Event)


def _load(payload: bytes, adapter: TypeAdapter[Any], what: str) -> Any:
    """The message in `payload`, or `FrameError`: whatever the bytes hold (deep nesting, a key twice,
    not UTF-8, not JSON), never another exception."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise FrameError(f"a {what} message is bytes, not {type(payload).__name__}", ErrorCode.BAD_MESSAGE)
    if len(payload) > MAX_CONTROL:
        raise FrameError(f"a {what} message of {len(payload)} bytes (at most {MAX_CONTROL})", ErrorCode.TOO_LARGE)
    try:
        return adapter.validate_python(strict_json.loads(payload))
    except (ValueError, ValidationError) as exc:  # strict_json's ProtocolError is a ValueError
        raise FrameError(f"not a {what} message: {str(exc).splitlines()[0]}", ErrorCode.BAD_MESSAGE) from None


def decode_control(payload: bytes) -> Hello | Capture | Mic | Clear:
    result: Hello | Capture | Mic | Clear = _load(payload, _CONTROL, "control")
    return result


def decode_event(payload: bytes) -> Welcome | Shown | Input | Battery | DeviceFault:
    result: Welcome | Shown | Input | Battery | DeviceFault = _load(payload, _EVENT, "event")
    return result


def hello_reassembler() -> Reassembler:
    """What reads frames on a new connection, until the hello exchange agrees on the limits."""
    return Reassembler(HELLO_ATT_PAYLOAD, max_message=MAX_CONTROL)


def choose_version(offered: list[int], spoken: tuple[int, ...] = SUPPORTED_VERSIONS) -> int:
    """The highest version both speak, or `FrameError(unsupported_version)`."""
    common = set(offered) & set(spoken)
    if not common:
        raise FrameError(f"no common protocol version: offered {offered}, spoken {list(spoken)}",
                         ErrorCode.UNSUPPORTED_VERSION)  # fmt: skip
    return max(common)


def audio_message(offset: int, pcm: bytes) -> bytes:
    return offset.to_bytes(AUDIO_HEADER, "little") + pcm


def split_audio(payload: bytes) -> tuple[int, bytes]:
    """`(offset in samples, PCM)` of an audio message, or `FrameError(bad_audio)`."""
    if len(payload) < AUDIO_HEADER or (len(payload) - AUDIO_HEADER) % 2:
        raise FrameError(f"an audio message of {len(payload)} bytes is not an offset and whole samples",
                         ErrorCode.BAD_AUDIO)  # fmt: skip
    return int.from_bytes(payload[:AUDIO_HEADER], "little"), payload[AUDIO_HEADER:]
