"""Every message on the bus: versioned pydantic models with a `type` discriminator.

Receivers ignore fields they do not know, except in what is hashed or signed (a proposal and its
lines and merchants: refused, never hashed unread); a breaking change bumps `v`. Amounts are integer
minor units (fen for CNY) everywhere. `decode` turns any payload into a model or a
`ProtocolError` with a code; it never raises anything else.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from . import strict_json
from .conformance import ConformanceControl
from .errors import ErrorCode, ProtocolError
from .fields import (
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Capability,
    Decision,
    DeviceKind,
    Id,
    Minor,
    Modality,
    Name,
    Nonce,
    Outcome,
    Sha256Hex,
    Text,
    Unit,
    WireMessage,
    WireModel,
    plain_text,
)
from .sponsored import Sponsored
from .step_up import StepUp, StepUpResult
from .wire_errors import protocol_error

LocaleTag = Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length=35)]
"""A BCP 47 language tag (`en-US`, `zh-CN`)."""
IdempotencyKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{27,128}$")]
"""128 bits or more: 27 to 128 characters of base64url or hex with a prefix."""
PublicKeyText = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]


class DeviceStatus(WireMessage):
    """Retained on the device's status topic; the last will publishes it with online=false."""

    type: Literal["device.status"] = "device.status"
    device_id: Id
    online: bool
    kind: DeviceKind = DeviceKind.OTHER
    capabilities: list[Capability] = Field(default_factory=list, max_length=32)
    protocol: int = Field(default=PROTOCOL_VERSION, description="Highest protocol version the device speaks.")
    firmware: Annotated[str, Field(max_length=64)] | None = None


class DeviceInfo(WireMessage):
    """Retained on the device's info topic: what the device is, the same fields as its zeroconf TXT
    record (`device_sdk.discovery.records`), so a client on the bus and one on the LAN see one description."""

    type: Literal["device.info"] = "device.info"
    device_id: Id
    kind: DeviceKind = DeviceKind.OTHER
    capabilities: list[Capability] = Field(default_factory=list, max_length=32)
    protocol: int = Field(default=PROTOCOL_VERSION, ge=1, le=255, description="Highest protocol version spoken.")
    firmware: Annotated[str, Field(min_length=1, max_length=64), AfterValidator(plain_text)] | None = None
    room: Id | None = Field(default=None, description="Where the device is; wake words are arbitrated per room.")
    locale: LocaleTag | None = Field(default=None, description="The language its user speaks and reads (none: en-US).")
    public_key: PublicKeyText | None = Field(default=None, description="Its Ed25519 signing key, raw, base64url.")


class GatewayStatus(WireMessage):
    """Retained on the gateway's status topic; the last will publishes it with online=false."""

    type: Literal["gateway.status"] = "gateway.status"
    gateway_id: Id
    online: bool


class ControllerClaim(WireMessage):
    """Retained on a device's controller topic: the one gateway that serves this device."""

    type: Literal["controller.claim"] = "controller.claim"
    device_id: Id
    controller_id: Id
    claimed_at: float


class Ping(WireMessage):
    """Heartbeat from a device; the controller answers with `pong` carrying the same seq."""

    type: Literal["ping"] = "ping"
    seq: int = Field(ge=0)


class Pong(WireMessage):
    type: Literal["pong"] = "pong"
    seq: int = Field(ge=0)
    controller_id: Id


class Transcript(WireMessage):
    """Speech recognised on or for a device, partial while the user speaks, then final."""

    type: Literal["transcript"] = "transcript"
    session_id: Id
    text: Text
    final: bool
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)


class Wake(WireMessage):
    """The wake word was heard: may the device open `session_id`? Of a room's devices, one is granted."""

    type: Literal["wake"] = "wake"
    wake_id: Id
    session_id: Id
    confidence: float = Field(ge=0.0, le=1.0, description="The wake-word detector's confidence.")
    energy_db: float = Field(ge=-120.0, le=0.0, description="Loudness of the wake word, dBFS (RMS).")


class WakeResult(WireMessage):
    """The answer to a `wake`: granted, open the session; else `winner` took it, go back to listening."""

    type: Literal["wake.result"] = "wake.result"
    wake_id: Id
    session_id: Id
    granted: bool
    winner: Id = Field(description="The device whose wake opened the session.")


MAX_WAKE_WINDOW = 1.0
"""The longest a gateway's wake-word arbitration round may be, in seconds; a device waits for the
`wake.result` about twice this long (`DeviceClient.wake`, `VoiceAssistant`)."""


class AudioFormat(WireModel):
    """Raw PCM as the chunks carry it: signed 16-bit little-endian, mono."""

    rate: int = Field(default=16000, ge=8000, le=48000, description="Samples per second.")
    width: Literal[2] = Field(default=2, description="Bytes per sample.")
    channels: Literal[1] = 1
    encoding: Literal["pcm_s16le"] = "pcm_s16le"


class AudioStart(WireMessage):
    """Opens an audio stream for a session; the chunks follow on the device's audio topic."""

    type: Literal["audio.start"] = "audio.start"
    session_id: Id
    stream: int = Field(ge=0, le=0xFFFF, description="Tag that the chunks of this stream carry.")
    format: AudioFormat = Field(default_factory=AudioFormat)


class AudioStop(WireMessage):
    """Closes an audio stream; `samples` is how many samples the device sent in all."""

    type: Literal["audio.stop"] = "audio.stop"
    session_id: Id
    stream: int = Field(ge=0, le=0xFFFF)
    samples: int = Field(ge=0)


class AgentRequest(WireMessage):
    """What the user asked for, routed from a device to the agent core."""

    type: Literal["agent.request"] = "agent.request"
    request_id: Id
    device_id: Id
    session_id: Id
    text: Annotated[str, Field(min_length=1, max_length=2000)]
    image_ref: Annotated[str, Field(max_length=512)] | None = Field(
        default=None, description="Reference to a camera frame the user looked at (not the image bytes)."
    )
    locale: LocaleTag = "en-US"
    reply_to: Annotated[str, Field(max_length=256)] | None = Field(
        default=None, description="Topic for the answer; set by the gateway on the agent request topic."
    )


class Merchant(WireModel):
    """A seller or the payee, as named in a proposal (hashed: unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    id: Id
    name: Name


class ProposalLine(WireModel):
    """One item of a proposal (hashed: unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    sku: Id
    name: Name
    qty: int = Field(ge=1, le=99)
    unit: Unit = "piece"
    unit_price_minor: Minor
    line_total_minor: Minor
    seller: Merchant
    category: Id | None = Field(
        default=None, description="The merchant's product category; the risk policy reads it (e.g. alcohol)."
    )
    sponsored: Sponsored | None = Field(
        default=None, description="Set when the line's placement was paid for: every surface discloses it first."
    )

    @model_validator(mode="after")
    def _line_total(self) -> ProposalLine:
        if self.line_total_minor != self.qty * self.unit_price_minor:
            raise ValueError("line_total_minor must equal qty * unit_price_minor")
        return self


class CheckoutProposal(WireMessage):
    """A cart proposed by the agent. Its SHA-256 over the bytes as issued is the checkout hash, so
    a field this side does not know is refused rather than hashed unread (`extra="forbid"`)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["checkout.proposal"] = "checkout.proposal"
    checkout_id: Id
    request_id: Id
    device_id: Id
    session_id: Id
    merchant: Merchant = Field(description="Merchant of record: the payee of the whole order.")
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    lines: list[ProposalLine] = Field(min_length=1, max_length=50)
    total_minor: Minor
    created_at: float
    locale: LocaleTag | None = Field(
        default=None, description="The device's locale (none: en-US): the read-back, card and sheet are in it."
    )

    @property
    def language(self) -> str:
        """The locale its text is composed in."""
        return self.locale or "en-US"

    @model_validator(mode="after")
    def _total(self) -> CheckoutProposal:
        if self.total_minor != sum(line.line_total_minor for line in self.lines):
            raise ValueError("total_minor must equal the sum of the line totals")
        if len({line.sku for line in self.lines}) != len(self.lines):
            raise ValueError("each sku appears on one line only")
        return self


@dataclass(frozen=True)
class IssuedProposal:
    """A proposal together with the exact bytes it was issued as; their SHA-256 is the checkout hash."""

    proposal: CheckoutProposal
    raw: bytes

    @property
    def checkout_hash(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


class ConsentTerms(WireModel):
    """What the checkout's verifier requires of a consent mandate for one proposal."""

    audience: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        description="The verifier: the mandate's `aud`."
    )
    nonce: Nonce = Field(description="Issued with this proposal; a mandate must carry it, and only one may.")
    payment_handler: Id = Field(description="The approved payment channel the mandate authorises.")
    modalities: list[Modality] = Field(min_length=1, description="How the user may confirm this proposal.")
    max_lifetime: int = Field(default=300, ge=1, le=900, description="Longest mandate lifetime accepted, seconds.")


class ConfirmationRequest(WireMessage):
    """Sent to the device: the proposal, the SDK's read-back of it, and how it may be confirmed."""

    type: Literal["confirmation.request"] = "confirmation.request"
    session_id: Id
    checkout_id: Id
    checkout_hash: Sha256Hex
    proposal: CheckoutProposal
    request_id: Id = Field(description="The device's agent.request that this offer answers.")
    readback: Annotated[str, Field(max_length=16000)] = Field(
        description="What the device says or shows, composed by the SDK, never by the agent."
    )
    display_digest: Sha256Hex = Field(description="SHA-256 of the UTF-8 read-back text.")
    consent: ConsentTerms
    expires_at: float
    handed_over_from: Id | None = Field(
        default=None,
        description="Set on an offer handed to a paired phone: the device whose session it is (`handover`).",
    )


class HandOver(WireMessage):
    """The device could not get an answer (the voice did not hear it twice) and hands the offer to
    the phone it was paired with at provisioning, whose sheet the user confirms instead."""

    type: Literal["handover"] = "handover"
    session_id: Id
    checkout_id: Id
    checkout_hash: Sha256Hex


class HandedOver(WireMessage):
    """The answer to `handover`: the offer is on the sheet of `to_device`; `order.result` follows, to both."""

    type: Literal["handed_over"] = "handed_over"
    session_id: Id
    checkout_id: Id
    to_device: Id


class ConfirmationResult(WireMessage):
    """The user's answer, given on the device that owns the session (or the phone it handed the offer to)."""

    type: Literal["confirmation.result"] = "confirmation.result"
    session_id: Id
    checkout_id: Id
    checkout_hash: Sha256Hex
    decision: Decision
    modality: Modality
    display_digest: Sha256Hex = Field(description="SHA-256 of what the device actually presented.")
    heard: Text | None = Field(default=None, description="The reply as heard or typed, for the audit trail.")
    mandate: Annotated[str, Field(max_length=8192)] | None = Field(
        default=None, description="Device-signed consent mandate (compact JWS), where the device signs."
    )
    idempotency_key: IdempotencyKey | None = Field(
        default=None, description="The device's key for this answer, the same in every retry of it (any gateway)."
    )
    declined_for: Annotated[str, Field(pattern=r"^edge_policy\.[a-z_]{1,32}$")] | None = Field(
        default=None, description="Why the device's own policy declined: `edge_policy.<rule>` (with a decline only)."
    )


class OrderResult(WireMessage):
    """How a session ended: an order, or why there is none."""

    type: Literal["order.result"] = "order.result"
    session_id: Id
    checkout_id: Id | None = None
    outcome: Outcome
    order_id: Id | None = None
    total_minor: Minor | None = None
    currency: str | None = None
    reason: Text | None = None

    @model_validator(mode="after")
    def _order_iff_ordered(self) -> OrderResult:
        if (self.outcome is Outcome.ORDERED) != (self.order_id is not None):
            raise ValueError("order_id is set exactly when the outcome is 'ordered'")
        return self


class OrderStatus(WireMessage):
    """How does my checkout stand (no answer came, a gateway restarted)? Any gateway answers from the store."""

    type: Literal["order.status"] = "order.status"
    session_id: Id
    checkout_id: Id


class OrderStatusResult(WireMessage):
    """How a checkout stands in the store: `open` (no confirmation admitted: the offer may still be
    answered), `pending` (admitted, the order is being placed: ask again) or `ended` (`result`)."""

    type: Literal["order.status.result"] = "order.status.result"
    session_id: Id
    checkout_id: Id
    state: Literal["open", "pending", "ended"]
    result: OrderResult | None = Field(default=None, description="How the session ended, exactly when `ended`.")

    @model_validator(mode="after")
    def _result_iff_ended(self) -> OrderStatusResult:
        if (self.state == "ended") != (self.result is not None) or (
            self.result and self.result.checkout_id != self.checkout_id
        ):
            raise ValueError("result is set (for this checkout) exactly when the state is 'ended'")
        return self


class IntentResult(WireMessage):
    """The intent bridge's answer to a phone OEM intent, on the OEM's reply topic (or as the body
    of the local endpoint's response): how the intent ended, or why it was refused (`code`)."""

    type: Literal["intent.result"] = "intent.result"
    intent_id: Id | None = Field(default=None, description="None when refused before its signature verified.")
    outcome: Outcome | None = Field(default=None, description="The session's outcome; None when refused.")
    order_id: Id | None = None
    total_minor: Minor | None = None
    currency: str | None = None
    deep_link: Annotated[str, Field(max_length=2048)] | None = Field(
        default=None, description="Set when the checkout was handed to the phone's app to confirm there."
    )
    code: ErrorCode | None = Field(default=None, description="Why the intent was refused or did not order.")
    text: Text | None = None


class Error(WireMessage):
    """A refusal or failure, answered to whoever sent the message it refers to."""

    type: Literal["error"] = "error"
    code: ErrorCode
    text: Text
    ref: Annotated[str, Field(max_length=128)] | None = Field(
        default=None, description="request_id, checkout_id or message type this error answers."
    )
    session_id: Id | None = None


Message = Annotated[
    (
        DeviceStatus
        | DeviceInfo
        | GatewayStatus
        | ControllerClaim
        | Ping
        | Pong
        | Transcript
        | Wake
        | WakeResult
        | AudioStart
        | AudioStop
        | AgentRequest
        | CheckoutProposal
        | ConfirmationRequest
        | ConfirmationResult
        | HandOver
        | HandedOver
        | StepUp
        | StepUpResult
        | OrderResult
        | OrderStatus
        | OrderStatusResult
        | IntentResult
        | Error
        | ConformanceControl
    ),
    Field(discriminator="type"),
]


MESSAGE_TYPES: tuple[type[WireMessage], ...] = (
    DeviceStatus,
    DeviceInfo,
    GatewayStatus,
    ControllerClaim,
    Ping,
    Pong,
    Transcript,
    Wake,
    WakeResult,
    AudioStart,
    AudioStop,
    AgentRequest,
    CheckoutProposal,
    ConfirmationRequest,
    ConfirmationResult,
    HandOver,
    HandedOver,
    StepUp,
    StepUpResult,
    OrderResult,
    OrderStatus,
    OrderStatusResult,
    IntentResult,
    Error,
    ConformanceControl,
)


_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)


def decode(payload: bytes | bytearray, max_size: int = MAX_PAYLOAD) -> Message:
    """Parse one wire payload into its message model, or raise `ProtocolError` with a code."""
    if len(payload) > max_size:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {max_size}", ErrorCode.TOO_LARGE)
    strict_json.check(payload)  # one reading: no key twice, no deep nesting, no NaN or lone surrogate
    try:
        return _ADAPTER.validate_json(payload, context=_WIRE)
    except ValidationError as exc:
        raise protocol_error(exc) from None


_WIRE = {"wire": True}


def message_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every message, keyed by its `type`."""
    out: dict[str, dict[str, Any]] = {}
    for model in MESSAGE_TYPES:
        tag = model.model_fields["type"].default
        out[str(tag)] = model.model_json_schema()
    return out
