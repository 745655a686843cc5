"""The consent mandate: what a device signs when its user confirms a checkout.

A compact JWS (RFC 7515) signed with the device's Ed25519 key: EdDSA (RFC 8037) under its fully
specified name `Ed25519` (RFC 9864), made and checked with joserfc. The header is exactly
`{"alg": "Ed25519", "kid": <key thumbprint>, "typ": "shop-consent+jws"}`; the payload is
`MandateClaims` as compact JSON. It binds the user's "yes"
to the checkout's hash (SHA-256 of the proposal's bytes as issued), the amount, payee and payment
channel, the verifier's nonce, and the digest of exactly what the device showed or said.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from joserfc import jws
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import ConsentError, ErrorCode, ProtocolError
from device_sdk.protocol.fields import Id, Modality, Nonce, Sha256Hex, new_id
from device_sdk.protocol.messages import ConfirmationRequest
from device_sdk.protocol.step_up import StepUpProof
from device_sdk.protocol.wire_errors import first_error

from .keys import PublicKey, SigningKey, b64url_decode

MANDATE_TYPE = "checkout_consent"
JWS_TYPE = "shop-consent+jws"
MAX_LIFETIME = 900
"""A mandate lives at most 15 minutes (`exp - iat`)."""
DEFAULT_LIFETIME = 300
MAX_TOKEN = 8192
ALG = "Ed25519"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_HEADER_KEYS = frozenset({"alg", "kid", "typ"})

Epoch = Annotated[int, Field(ge=0, le=2**40, strict=True)]


class MandateClaims(BaseModel):
    """The signed payload. Unknown claims are refused: a verifier never ignores what was signed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mandate_type: Literal["checkout_consent"] = "checkout_consent"
    mandate_version: Literal[1] = 1
    jti: Id = Field(description="Unique id of this mandate; the verifier accepts it once.")
    aud: Annotated[str, Field(min_length=1, max_length=256)] = Field(description="The verifier it is for.")
    nonce: Nonce
    iat: Epoch
    exp: Epoch
    checkout_id: Id
    checkout_hash: Sha256Hex
    payee: Id = Field(description="Merchant of record (its id).")
    amount_minor: Annotated[int, Field(ge=0, le=10**12, strict=True)] = Field(description="Integer minor units.")
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    payment_handler: Id
    device_id: Id
    session_id: Id
    modality: Modality
    display_digest: Sha256Hex = Field(description="SHA-256 of the read-back or card the user was given.")
    step_up: StepUpProof | None = Field(
        default=None, description="For `voice_pin`: the single-use proof the platform issued once the PIN checked out."
    )
    initiated_by: Literal["agent"] | None = Field(
        default=None, description="`agent`: the session began with the platform's suggestion, not the user's request."
    )


@dataclass(frozen=True)
class SignedMandate:
    """A mandate read and checked against a public key."""

    token: str
    kid: str
    claims: MandateClaims


def sign_mandate(key: SigningKey, claims: MandateClaims) -> str:
    """The compact JWS of `claims`, signed by `key`."""
    header = {"alg": ALG, "kid": key.public.kid, "typ": JWS_TYPE}
    payload = claims.model_dump_json(exclude_none=True).encode()
    return jws.serialize_compact(header, payload, key.jwk(), algorithms=[ALG])


@dataclass(frozen=True)
class ReadMandate:
    """A mandate whose form and header were checked, not yet its signature."""

    token: str
    kid: str
    compact: jws.CompactSignature


def read_mandate(token: str) -> ReadMandate:
    """Check a mandate's form and header (exactly alg, kid and typ) and say which key signed it."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN or not _TOKEN.match(token):
        raise ConsentError("the mandate is not a compact JWS", ErrorCode.MANDATE_MALFORMED)
    try:
        strict_json.check(b64url_decode(token.split(".", 1)[0]))  # one reading: no `alg` twice
        compact = jws.extract_compact(token.encode())
    except ProtocolError as exc:
        raise ConsentError(f"the mandate header: {exc.text}", ErrorCode.MANDATE_MALFORMED) from None
    except Exception as exc:  # whatever the bytes hold (deep nesting, odd JSON), a coded refusal
        raise ConsentError(f"unreadable mandate: {type(exc).__name__}", ErrorCode.MANDATE_MALFORMED) from None
    header: Any = compact.protected
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS or header["alg"] != ALG or header["typ"] != JWS_TYPE:
        raise ConsentError(
            f"the mandate header must be exactly alg {ALG}, typ {JWS_TYPE} and kid", ErrorCode.MANDATE_MALFORMED
        )
    kid = header["kid"]
    if not isinstance(kid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{43}", kid):
        raise ConsentError("the mandate names no key thumbprint", ErrorCode.MANDATE_MALFORMED)
    return ReadMandate(token, kid, compact)


def verify_mandate(read: ReadMandate, public: PublicKey) -> SignedMandate:
    """Check the signature with `public` and parse the claims, or raise `ConsentError`."""
    if read.kid != public.kid:
        raise ConsentError("the mandate was signed with another key", ErrorCode.UNKNOWN_KEY)
    try:
        valid = jws.validate_compact(read.compact, public.jwk(), algorithms=[ALG])
    except Exception as exc:
        raise ConsentError(f"unreadable mandate: {type(exc).__name__}", ErrorCode.MANDATE_MALFORMED) from None
    if not valid:
        raise ConsentError("the mandate's signature does not verify", ErrorCode.BAD_SIGNATURE)
    try:
        strict_json.check(read.compact.payload)  # one reading: no claim twice, no deep nesting
        claims = MandateClaims.model_validate_json(read.compact.payload)
    except ProtocolError as exc:
        raise ConsentError(f"mandate claims: {exc.text}", ErrorCode.MANDATE_MALFORMED) from None
    except ValidationError as exc:
        raise ConsentError(f"mandate claims: {first_error(exc)}", ErrorCode.MANDATE_MALFORMED) from None
    return SignedMandate(read.token, read.kid, claims)


def open_mandate(token: str, public: PublicKey) -> SignedMandate:
    """Read `token` and check it against `public`, or raise `ConsentError`."""
    return verify_mandate(read_mandate(token), public)


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The claims of a mandate without any check (None when unreadable): never trust them."""
    try:
        value = strict_json.loads(b64url_decode(token.split(".")[1]))
    except Exception:
        return None
    return value if isinstance(value, dict) else None


def mandate_id(token: str) -> str | None:
    """The `jti` a mandate claims, when it is a plain id, to name a refused one in the audit log."""
    claims = unverified_claims(token)
    jti = claims.get("jti") if claims else None
    return jti if isinstance(jti, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", jti) else None


def mandate_for(
    offer: ConfirmationRequest,
    key: SigningKey,
    *,
    device_id: str,
    modality: Modality,
    display_digest: str,
    lifetime: int | None = None,
    issued_at: int | None = None,
    step_up: str | None = None,
    initiated_by: Literal["agent"] | None = None,
) -> str:
    """The device's mandate for `offer`: signed when, and only when, its user confirmed it; a
    `voice_pin` one carries the `step_up` proof the platform gave for the PIN, and one the user gave to a
    suggestion `initiated_by="agent"`."""
    terms, proposal = offer.consent, offer.proposal
    iat = int(time.time()) if issued_at is None else issued_at
    claims = MandateClaims(
        jti=new_id("man"),
        aud=terms.audience,
        nonce=terms.nonce,
        iat=iat,
        exp=iat + min(lifetime or DEFAULT_LIFETIME, terms.max_lifetime, MAX_LIFETIME),
        checkout_id=offer.checkout_id,
        checkout_hash=offer.checkout_hash,
        payee=proposal.merchant.id,
        amount_minor=proposal.total_minor,
        currency=proposal.currency,
        payment_handler=terms.payment_handler,
        device_id=device_id,
        session_id=offer.session_id,
        modality=modality,
        display_digest=display_digest,
        step_up=step_up,
        initiated_by=initiated_by,
    )
    return sign_mandate(key, claims)
