"""Phone OEM intents: what a phone maker's system assistant sends to reach the shopping agent.

Shaped like an Android intent (an action, extras, the package that sent it) and signed by the
OEM's registered Ed25519 key. The wire form is a compact JWS (RFC 7515), made and checked with
joserfc like the consent mandate: header exactly `{"alg": "Ed25519", "kid": <RFC 7638 thumbprint>,
"typ": "shop-intent+jws"}`, payload the `OemIntent` as compact JSON. See docs/phone.md for the
schema, the refusals and a test vector.

`IntentVerifier.check` refuses, with an `IntentError` whose code says why, in this order: a token
over `MAX_INTENT` bytes (`too_large`); an intent that is not signed at all, plain JSON or `alg`
`none` (`unsigned`); a token that is not a well-formed JWS of this type (`bad_message`); a key no
OEM registered (`unknown_key`); a signature that does not verify (`bad_signature`); a payload that
is not an `OemIntent` (`bad_message`); an OEM id other than the key's (`unknown_key`); a timestamp
more than `max_skew` seconds from now, either way (`stale`); an action it does not know
(`unknown_action`); an intent id it has accepted before (`replayed`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from joserfc import jws
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_sdk.consent.keys import PublicKey, SigningKey, b64url_decode
from device_sdk.media.images import strip_metadata
from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import ErrorCode, IntentError, KeyStoreError, ProtocolError
from device_sdk.protocol.fields import Id
from device_sdk.protocol.wire_errors import first_error

JWS_TYPE = "shop-intent+jws"
ALG = "Ed25519"
ACTION_BUY = "ai.shop.intent.action.BUY"
"""Ask the agent for what `extras.query` says (about `extras.image`, when there is one), confirm on the sheet."""
ACTIONS = frozenset({ACTION_BUY})
MAX_IMAGE_BYTES = 256 * 1024
MAX_IMAGE_B64 = 4 * ((MAX_IMAGE_BYTES + 2) // 3)
"""An intent's image is at most 256 KiB of JPEG (base64 in the intent)."""
MAX_INTENT = 512 * 1024
"""Largest intent token accepted, in bytes."""
DEFAULT_MAX_SKEW = 120.0
_TOKEN = re.compile(rb"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$")
_HEADER_KEYS = frozenset({"alg", "kid", "typ"})
_REGISTRY = jws.JWSRegistry(algorithms=[ALG])
_REGISTRY.max_payload_length = MAX_INTENT  # joserfc's default (128,000 bytes) is below an intent with a photo


class IntentExtras(BaseModel):
    """The intent's extras: what the user asked, and what the camera saw."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    query: Annotated[str, Field(min_length=1, max_length=2000)] = Field(description="What the user asked for.")
    image: Annotated[str, Field(max_length=MAX_IMAGE_B64, pattern=r"^[A-Za-z0-9+/]*={0,2}$")] | None = Field(
        default=None, description="A JPEG the user pointed the camera at, standard base64."
    )
    locale: Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")] = "en-US"

    def jpeg(self) -> bytes | None:
        if self.image is None:
            return None
        try:
            return base64.b64decode(self.image, validate=True)
        except binascii.Error:
            raise IntentError("extras.image is not base64", ErrorCode.BAD_MESSAGE) from None


class OemIntent(BaseModel):
    """One intent from a phone OEM's assistant, as signed. Unknown fields are refused: what was
    signed is read whole or not at all."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    intent_id: Id = Field(description="Unique per intent; the bridge takes each once.")
    action: Annotated[str, Field(min_length=1, max_length=128)]
    extras: IntentExtras
    source_package: Annotated[
        str, Field(max_length=255, pattern=r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$")
    ] = Field(description="The Android package of the assistant that sent it.")
    oem_id: Id = Field(description="The phone maker, as registered with its key.")
    device_id: Id = Field(description="The phone: the device whose sheet confirms, on the bus.")
    timestamp: Annotated[int, Field(ge=0, le=2**53, strict=True)] = Field(
        description="When the assistant sent it: milliseconds since the Unix epoch."
    )


def sign_intent(key: SigningKey, intent: OemIntent) -> str:
    """The compact JWS of `intent`, signed with the OEM's key. Its image is signed stripped of its
    metadata (`strip_metadata`: no EXIF, GPS, XMP, later pictures; turned upright), so an intent
    signed here never carries where the picture was taken; `ProtocolError(bad_image)` for an image
    that is not a JPEG this SDK takes."""
    jpeg = intent.extras.jpeg()
    if jpeg is not None:
        clean = base64.b64encode(strip_metadata(jpeg, max_size=MAX_IMAGE_BYTES)).decode()
        intent = intent.model_copy(update={"extras": intent.extras.model_copy(update={"image": clean})})
    header = {"alg": ALG, "kid": key.public.kid, "typ": JWS_TYPE}
    return jws.serialize_compact(
        header, intent.model_dump_json(exclude_none=True).encode(), key.jwk(), algorithms=[ALG]
    )


@dataclass(frozen=True)
class OemKey:
    oem_id: str
    public: PublicKey


class OemKeys:
    """The OEM keys a bridge trusts, by key id. From a JSON file: `{"oems": {"<oem id>": ["<public
    key: base64url raw, JWK or PEM>", ...]}}`."""

    def __init__(self, keys: Iterable[tuple[str, PublicKey]] = ()) -> None:
        self._by_kid: dict[str, OemKey] = {}
        for oem_id, public in keys:
            self.add(oem_id, public)

    def add(self, oem_id: str, public: PublicKey) -> str:
        known = self._by_kid.get(public.kid)
        if known is not None and known.oem_id != oem_id:
            raise KeyStoreError(f"key {public.kid} is already registered to {known.oem_id}", ErrorCode.KEY_CONFLICT)
        self._by_kid[public.kid] = OemKey(oem_id, public)
        return public.kid

    def get(self, kid: str) -> OemKey | None:
        return self._by_kid.get(kid)

    def __len__(self) -> int:
        return len(self._by_kid)

    @classmethod
    def load(cls, path: str | Path) -> OemKeys:
        try:
            data = strict_json.loads(Path(path).read_bytes())
        except OSError as exc:
            raise KeyStoreError(f"cannot read the OEM keys {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise KeyStoreError(f"the OEM keys {path} are not JSON: {exc}") from None
        oems = data.get("oems") if isinstance(data, dict) else None
        if not isinstance(oems, dict) or not all(isinstance(v, list) for v in oems.values()):
            raise KeyStoreError(f'{path}: expected {{"oems": {{"<oem id>": ["<public key>", ...]}}}}')
        return cls((oem_id, PublicKey.from_text(str(text))) for oem_id, texts in oems.items() for text in texts)

    def dump(self) -> str:
        oems: dict[str, list[str]] = {}
        for key in self._by_kid.values():
            oems.setdefault(key.oem_id, []).append(json.dumps(key.public.jwk().as_dict(private=False)))
        return json.dumps({"oems": oems}, indent=2) + "\n"


class IntentVerifier:
    """Checks intents against the registered OEM keys, the clock and the intents already taken."""

    def __init__(
        self,
        keys: OemKeys,
        *,
        max_skew: float = DEFAULT_MAX_SKEW,
        remember: int = 100_000,
        actions: frozenset[str] = ACTIONS,
    ) -> None:
        self.keys = keys
        self.max_skew = max_skew
        self.actions = actions
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._remember = remember

    def check(self, token: bytes | str, *, now: float | None = None) -> OemIntent:
        """The intent in `token`, or `IntentError` with the reason. An accepted intent is remembered
        (for twice the allowed skew, when a replay would be stale anyway) and refused after."""
        raw = _token_bytes(token)
        if now is not None and (not isinstance(now, int | float) or isinstance(now, bool) or not math.isfinite(now)):
            raise IntentError(f"now is a time in seconds, not {now!r}", ErrorCode.BAD_MESSAGE)
        if len(raw) > MAX_INTENT:
            raise IntentError(f"an intent of {len(raw)} bytes (at most {MAX_INTENT})", ErrorCode.TOO_LARGE)
        compact = _read(raw)
        header: dict[str, Any] = compact.protected
        key = self.keys.get(header["kid"])
        if key is None:
            raise IntentError(f"no OEM registered the key {header['kid']}", ErrorCode.UNKNOWN_KEY)
        try:
            valid = jws.validate_compact(compact, key.public.jwk(), algorithms=[ALG], registry=_REGISTRY)
        except Exception as exc:
            raise IntentError(f"unreadable signature: {type(exc).__name__}", ErrorCode.BAD_MESSAGE) from None
        if not valid:
            raise IntentError("the intent's signature does not verify", ErrorCode.BAD_SIGNATURE)
        try:
            strict_json.check(compact.payload)  # one reading: no field twice, no deep nesting
            intent = OemIntent.model_validate_json(compact.payload)
        except ProtocolError as exc:
            raise IntentError(f"intent: {exc.text}", ErrorCode.BAD_MESSAGE) from None
        except ValidationError as exc:
            raise IntentError(f"intent: {first_error(exc)}", ErrorCode.BAD_MESSAGE) from None
        ident = intent.intent_id
        if intent.oem_id != key.oem_id:
            raise IntentError(
                f"the key is {key.oem_id}'s, the intent says {intent.oem_id}", ErrorCode.UNKNOWN_KEY, intent_id=ident
            )
        now = time.time() if now is None else now
        skew = intent.timestamp / 1000 - now
        if abs(skew) > self.max_skew:
            when = "in the future" if skew > 0 else "old"
            text = f"the intent is {abs(skew):.0f} s {when} (at most {self.max_skew:.0f})"
            raise IntentError(text, ErrorCode.STALE, intent_id=ident)
        if intent.action not in self.actions:
            raise IntentError(f"unknown action {intent.action!r}", ErrorCode.UNKNOWN_ACTION, intent_id=ident)
        while self._seen and next(iter(self._seen.values())) < now:  # forget what would be stale anyway
            self._seen.popitem(last=False)
        seen_key = f"{key.oem_id}/{ident}"
        if seen_key in self._seen:
            raise IntentError(f"intent {ident} was taken already", ErrorCode.REPLAYED, intent_id=ident)
        if len(self._seen) >= self._remember:  # never forget a fresh one: it could be replayed
            raise IntentError("too many intents in the last minutes; try again", ErrorCode.BUSY, intent_id=ident)
        self._seen[seen_key] = now + 2 * self.max_skew
        return intent


def _token_bytes(token: object) -> bytes:
    """An intent token's bytes: text (UTF-8, so no lone surrogate) or bytes, else `IntentError`."""
    if isinstance(token, str):
        try:
            return token.encode()
        except UnicodeEncodeError:
            raise IntentError("an intent token is UTF-8 text", ErrorCode.BAD_MESSAGE) from None
    if isinstance(token, bytes | bytearray | memoryview):
        return bytes(token)
    raise IntentError(f"an intent token is text or bytes, not {type(token).__name__}", ErrorCode.BAD_MESSAGE)


def _read(raw: bytes) -> jws.CompactSignature:
    """The JWS's parts, with its header checked (exactly alg, kid and typ), or the refusal."""
    stripped = raw.strip()
    if stripped.startswith(b"{"):
        raise IntentError("an intent must be signed (a compact JWS), not plain JSON", ErrorCode.UNSIGNED)
    if not _TOKEN.match(stripped):
        raise IntentError("an intent is a compact JWS: three base64url parts", ErrorCode.BAD_MESSAGE)
    header_part, _, signature = stripped.rpartition(b".")
    try:
        header = strict_json.loads(b64url_decode(header_part.split(b".")[0].decode()))
    except ProtocolError as exc:  # a key twice (two `alg`), deep nesting, not UTF-8
        raise IntentError(f"the intent's header: {exc.text}", ErrorCode.BAD_MESSAGE) from None
    except Exception:
        raise IntentError("the intent's header is not base64url JSON", ErrorCode.BAD_MESSAGE) from None
    if not isinstance(header, dict):
        raise IntentError("the intent's header is not a JSON object", ErrorCode.BAD_MESSAGE)
    if not signature or str(header.get("alg", "")).lower() == "none":
        raise IntentError("the intent carries no signature", ErrorCode.UNSIGNED)
    if set(header) != _HEADER_KEYS or header["alg"] != ALG or header["typ"] != JWS_TYPE:
        raise IntentError(
            f"the intent's header must be exactly alg {ALG}, typ {JWS_TYPE} and kid", ErrorCode.BAD_MESSAGE
        )
    if not isinstance(header["kid"], str) or not re.fullmatch(r"[A-Za-z0-9_-]{43}", header["kid"]):
        raise IntentError("the intent names no key thumbprint", ErrorCode.BAD_MESSAGE)
    try:
        return jws.extract_compact(stripped, registry=_REGISTRY)
    except Exception as exc:
        raise IntentError(f"unreadable intent: {type(exc).__name__}", ErrorCode.BAD_MESSAGE) from None
