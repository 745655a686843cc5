"""One error root for the SDK; every error carries a code that is also its wire form."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Codes carried by `error` messages on the bus and by every SDK exception."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    TOO_LARGE = "too_large"
    UNKNOWN_TYPE = "unknown_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_LOCALE = "unsupported_locale"
    WRONG_TOPIC = "wrong_topic"
    BAD_AUDIO = "bad_audio"
    UNKNOWN_STREAM = "unknown_stream"
    UNEXPECTED_MESSAGE = "unexpected_message"
    SESSION_NOT_OWNED = "session_not_owned"
    SESSION_CLOSED = "session_closed"
    UNKNOWN_CHECKOUT = "unknown_checkout"
    STALE_CHECKOUT = "stale_checkout"
    CHECKOUT_CLOSED = "checkout_closed"
    HASH_MISMATCH = "hash_mismatch"
    DISPLAY_MISMATCH = "display_mismatch"
    SPONSORED_NOT_DISCLOSED = "sponsored_not_disclosed"
    """A paid placement without its disclosure: a line of it not labelled `sponsored`, or a mandate
    signed over a rendering that did not show the label (docs/consent.md, "Sponsored items")."""
    NOT_CONFIRMED = "not_confirmed"
    BAD_PROPOSAL = "bad_proposal"
    NOT_UNDERSTOOD = "not_understood"
    ITEM_NOT_FOUND = "item_not_found"
    QUANTITY_OUT_OF_RANGE = "quantity_out_of_range"
    AGENT_TIMEOUT = "agent_timeout"
    TIMEOUT = "timeout"
    NOT_CONNECTED = "not_connected"
    CONTROLLER_LOST = "controller_lost"
    DEVICE_OFFLINE = "device_offline"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    """A device sent faster than its limits at the gateway allow: what went over was dropped."""
    QUOTA_EXCEEDED = "quota_exceeded"
    """A device asked for a new checkout while it had its quota of open ones: nothing was opened."""
    INTERNAL = "internal"
    # consent: the verifier's reason codes (outcome not_confirmed unless listed in OUTCOME_OF)
    MANDATE_MISSING = "mandate_missing"
    MANDATE_MALFORMED = "mandate_malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    KEY_REVOKED = "key_revoked"
    WRONG_AUDIENCE = "wrong_audience"
    NONCE_UNKNOWN = "nonce_unknown"
    NONCE_USED = "nonce_used"
    MANDATE_EXPIRED = "mandate_expired"
    MANDATE_REPLAYED = "mandate_replayed"
    AMOUNT_MISMATCH = "amount_mismatch"
    PAYEE_MISMATCH = "payee_mismatch"
    MODALITY_MISMATCH = "modality_mismatch"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    BAD_IDEMPOTENCY_KEY = "bad_idempotency_key"
    # risk policy
    STEP_UP_REQUIRED = "step_up_required"
    DAILY_CAP = "daily_cap"
    VELOCITY_LIMIT = "velocity_limit"
    CATEGORY_BLOCKED = "category_blocked"
    MERCHANT_NOT_ALLOWED = "merchant_not_allowed"
    PAYMENT_CHANNEL_NOT_ALLOWED = "payment_channel_not_allowed"
    PAYMENT_DECLINED = "payment_declined"
    # a UCP merchant behind the checkout (docs/ucp.md)
    MERCHANT_UNVERIFIED = "merchant_unverified"
    """The merchant's authorisation of its checkout is missing or does not verify against its profile's keys."""
    TOTALS_MISMATCH = "totals_mismatch"
    """A merchant's checkout whose totals do not add up, or do not match the proposal read back."""
    UNKNOWN_CURRENCY = "unknown_currency"
    CHECKOUT_EXPIRED = "checkout_expired"
    CART_CHANGED = "cart_changed"
    """The merchant's checkout changed after the device confirmed it: no order."""
    NOT_PAIRED = "not_paired"
    """A hand-over to a device that was not paired with the session's device at provisioning."""
    MODALITY_NOT_SUPPORTED = "modality_not_supported"
    """A confirmation by a modality the signer's provisioned kind and capabilities lack (a lens tap
    from a speaker, a phone sheet from glasses), or a `voice_pin` from a device with no PIN."""
    STEP_UP_FAILED = "step_up_failed"
    """A wrong PIN: no proof; the reply says how many tries are left before the lockout."""
    STEP_UP_LOCKED = "step_up_locked"
    """Too many wrong PINs: the device's step-up is locked for a while."""
    # local state: keys, configuration, the database and the audit log
    KEY_FILE = "key_file"
    KEY_CONFLICT = "key_conflict"
    BAD_CONFIG = "bad_config"
    STORE_FAILED = "store_failed"
    AUDIT_BROKEN = "audit_broken"
    # voice: recognition, synthesis and audio devices
    NO_MODEL = "no_model"
    NO_PRONUNCIATION = "no_pronunciation"
    BAD_GRAMMAR = "bad_grammar"
    ASR_FAILED = "asr_failed"
    TTS_UNAVAILABLE = "tts_unavailable"
    AUDIO_DEVICE = "audio_device"
    # BLE frames
    BAD_FRAME = "bad_frame"
    BAD_CRC = "bad_crc"
    # camera images
    BAD_IMAGE = "bad_image"
    # the broker: credentials and access control
    NOT_AUTHORIZED = "not_authorized"
    # phone OEM intents
    UNKNOWN_ACTION = "unknown_action"
    UNSIGNED = "unsigned"
    STALE = "stale"
    REPLAYED = "replayed"
    # multi-device arbitration
    NOT_CHOSEN = "not_chosen"
    # the device's own limits (docs/edge-policy.md)
    EDGE_POLICY = "edge_policy"
    """The device's edge policy refused an offer: it was declined on the device and nothing was signed."""


OUTCOME_OF: dict[ErrorCode, str] = {
    ErrorCode.STEP_UP_REQUIRED: "step_up_required",
    ErrorCode.STEP_UP_FAILED: "step_up_required",
    ErrorCode.STEP_UP_LOCKED: "step_up_required",
    ErrorCode.DAILY_CAP: "blocked",
    ErrorCode.VELOCITY_LIMIT: "blocked",
    ErrorCode.CATEGORY_BLOCKED: "blocked",
    ErrorCode.MERCHANT_NOT_ALLOWED: "blocked",
    ErrorCode.PAYMENT_CHANNEL_NOT_ALLOWED: "blocked",
}
"""The session outcome a refusal gives the user; every other refusal is `not_confirmed`."""


class DeviceSdkError(Exception):
    """Root of every error the SDK raises."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, text: str, code: ErrorCode | None = None) -> None:
        super().__init__(text)
        self.text = text
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.text}"


class ProtocolError(DeviceSdkError, ValueError):
    """A payload or topic that breaks the wire protocol (bad JSON, unknown type, too large...)."""

    code = ErrorCode.BAD_MESSAGE


class BusError(DeviceSdkError):
    """The MQTT connection failed or is not up."""

    code = ErrorCode.NOT_CONNECTED


class RequestTimeout(DeviceSdkError, TimeoutError):
    """No answer to a correlated request within its timeout."""

    code = ErrorCode.TIMEOUT


class RemoteError(DeviceSdkError):
    """The peer answered a request with an `error` message."""


class AgentError(DeviceSdkError):
    """The agent core could not turn a request into a proposal."""

    code = ErrorCode.NOT_UNDERSTOOD


class CheckoutError(DeviceSdkError):
    """The checkout refused to complete; nothing was ordered. `outcome` is what the user is told."""

    code = ErrorCode.NOT_CONFIRMED

    def __init__(self, text: str, code: ErrorCode | None = None, outcome: str = "not_confirmed") -> None:
        super().__init__(text, code)
        self.outcome = outcome


class ConsentError(CheckoutError):
    """The verifier refused a completion: a bad, replayed or mismatched mandate, or the risk policy.

    The code is the reason; the outcome follows from it (`OUTCOME_OF`). Nothing was ordered.
    """

    def __init__(self, text: str, code: ErrorCode) -> None:
        super().__init__(text, code, OUTCOME_OF.get(code, "not_confirmed"))


class KeyStoreError(DeviceSdkError):
    """A key file that is missing, unreadable or readable by others, or a key registration conflict."""

    code = ErrorCode.KEY_FILE


class ConfigError(DeviceSdkError, ValueError):
    """A configuration file that cannot be read or does not validate."""

    code = ErrorCode.BAD_CONFIG


class StoreError(DeviceSdkError):
    """The database could not record something; whatever depended on it did not happen."""

    code = ErrorCode.STORE_FAILED


class SessionError(DeviceSdkError):
    """A message that the session it names cannot accept (wrong owner, closed, stale)."""

    code = ErrorCode.UNEXPECTED_MESSAGE


class LimitError(DeviceSdkError):
    """A device went over one of its per-device limits at the gateway (`rate_limited`) or over its
    quota of open checkouts (`quota_exceeded`). What it sent was dropped; nothing was opened, asked
    or recorded for it, and every other device is served as before."""

    code = ErrorCode.RATE_LIMITED


class VoiceError(DeviceSdkError):
    """Recognition, synthesis or an audio device failed: no model, a word with no pronunciation, a
    grammar the engine refused, no espeak-ng, a microphone that cannot be opened."""

    code = ErrorCode.ASR_FAILED


class IntentError(DeviceSdkError, ValueError):
    """A phone OEM intent that is refused: unknown action, unsigned, badly signed, by an unknown key,
    stale, replayed, too large or malformed. Nothing was asked of the agent. `intent_id` is set once
    the signature has verified (the refusal can then name the intent it answers)."""

    code = ErrorCode.BAD_MESSAGE

    def __init__(self, text: str, code: ErrorCode | None = None, *, intent_id: str | None = None) -> None:
        super().__init__(text, code)
        self.intent_id = intent_id


class FrameError(DeviceSdkError, ValueError):
    """A BLE frame or message that cannot be taken: malformed, over the size limit, of an unknown
    protocol version or type, or with a CRC that does not match."""

    code = ErrorCode.BAD_FRAME
