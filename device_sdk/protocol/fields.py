"""The protocol's building blocks: its version, the field types every message uses (ids, names,
minor units, digests), the enums, and the base models that put `v` and `type` on the wire."""

from __future__ import annotations

import hashlib
import time
import unicodedata
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .names import shown_name

PROTOCOL_VERSION = 1
MAX_PAYLOAD = 64 * 1024
"""Largest JSON payload accepted on any topic, in bytes."""

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Topic-safe identifier.")]
Text = Annotated[str, Field(max_length=2000)]


def plain_text(value: str) -> str:
    """Refuse control, format (bidi overrides), private-use and line/paragraph separator characters."""
    for char in value:
        if unicodedata.category(char) in _NOT_PLAIN or (char.isspace() and char != " "):
            raise ValueError(f"character U+{ord(char):04X} is not allowed in a name")
    return value


_NOT_PLAIN = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})


def _shown_name(value: str, info: ValidationInfo) -> str:
    name = shown_name(value)
    if name != value and info.context and info.context.get("wire"):  # the hash is over the bytes as sent
        raise ValueError("a name on the wire must be in Unicode NFC: compose it before it is sent")
    return name


Name = Annotated[str, Field(min_length=1, max_length=120), AfterValidator(_shown_name)]
"""A name from the agent or a merchant that the SDK shows or reads out (`names.shown_name`): one
line of visible text in NFC that cannot pass for a price. A model built in code composes it; one
read from the wire must carry it composed already."""
Unit = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_shown_name)]
"""A line's unit (`piece`, `pack`, `盒`): read out beside the quantity, so a name by the same rule."""
Minor = Annotated[int, Field(ge=0, le=10**12, description="Integer minor units (fen for CNY).")]
Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def sha256_hex(text: str) -> str:
    """SHA-256 of the UTF-8 text, as lower-case hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_id(prefix: str) -> str:
    """A fresh random identifier (122 random bits) with a readable prefix."""
    return f"{prefix}_{uuid.uuid4().hex}"


class DeviceKind(StrEnum):
    SPEAKER = "speaker"
    GLASSES = "glasses"
    PHONE = "phone"
    OTHER = "other"


class Capability(StrEnum):
    MIC = "mic"
    AUDIO_OUT = "audio_out"
    DISPLAY = "display"
    CAMERA = "camera"
    BUTTON = "button"
    TOUCH = "touch"
    TEXT = "text"


class Modality(StrEnum):
    """How the user gave a confirmation on the device."""

    VOICE = "voice"
    VOICE_PIN = "voice_pin"
    LENS_TAP = "lens_tap"
    PHONE_SHEET = "phone_sheet"
    TEXT = "text"
    BUTTON = "button"
    """A press of the device's own button after the spoken read-back: the voice's other path."""


class Decision(StrEnum):
    CONFIRM = "confirm"
    DECLINE = "decline"
    NO_ANSWER = "no_answer"


class Outcome(StrEnum):
    ORDERED = "ordered"
    DECLINED = "declined"
    NOT_CONFIRMED = "not_confirmed"
    STEP_UP_REQUIRED = "step_up_required"
    BLOCKED = "blocked"


class WireModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", allow_inf_nan=False)


class WireMessage(WireModel):
    v: Literal[1] = Field(default=1, description="Protocol version.")

    @field_validator("v", mode="before")
    @classmethod
    def _version_is_a_number(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("the protocol version is an integer")
        return value

    @model_validator(mode="before")
    @classmethod
    def _version_on_the_wire(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context and info.context.get("wire") and isinstance(data, dict) and "v" not in data:
            raise ValueError("missing protocol version 'v'")
        return data

    def encode(self) -> bytes:
        """The wire form: compact UTF-8 JSON."""
        return self.model_dump_json(exclude_none=True).encode()


Nonce = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{22,128}$", description="At least 128 random bits.")]


def now() -> float:
    """Wall-clock seconds since the epoch, as carried in messages."""
    return time.time()
