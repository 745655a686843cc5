"""The merchant's authorisation of a checkout: a detached JWS over the checkout's JCS form.

`ap2.merchant_authorization` is `<header>..<signature>` (RFC 7515 appendix F): an ES256, ES384 or
ES512 signature over the RFC 8785 canonical JSON of the checkout without its `ap2` member, by a key
the merchant publishes under `keys` in its `/.well-known/ucp` profile, named by `kid` in the header.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from device_sdk.protocol.errors import CheckoutError, ErrorCode

ALGORITHMS = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
"""The algorithms a merchant may sign with, and the curve each needs."""

PUBLIC_MEMBERS = ("kty", "crv", "x", "y")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def canonical(value: Any) -> bytes:
    """RFC 8785 (JCS) bytes of `value`."""
    return rfc8785.dumps(value)


def unsigned(checkout: dict[str, Any]) -> dict[str, Any]:
    """The checkout as signed and hashed: without its `ap2` member."""
    return {name: field for name, field in checkout.items() if name != "ap2"}


def checkout_sha256(checkout: dict[str, Any]) -> str:
    """SHA-256 (base64url) of the checkout's JCS form without `ap2`: what the mandates bind."""
    return b64url(hashlib.sha256(canonical(unsigned(checkout))).digest())


def public_jwk(key: ECKey, kid: str) -> dict[str, Any]:
    """The public half of `key` as a profile publishes it (never `d`)."""
    public = key.as_dict(private=False)
    alg = next(name for name, curve in ALGORITHMS.items() if curve == public["crv"])
    return {**{name: public[name] for name in PUBLIC_MEMBERS}, "kid": kid, "alg": alg, "use": "sig"}


def sign_detached(checkout: dict[str, Any], key: ECKey, kid: str) -> str:
    """The detached JWS `header..signature` over `checkout` (its `ap2` left out)."""
    alg = public_jwk(key, kid)["alg"]
    token = jws.serialize_compact({"alg": alg, "kid": kid}, canonical(unsigned(checkout)), key, algorithms=[alg])
    header, _, signature = token.split(".")
    return f"{header}..{signature}"


def verify_detached(checkout: dict[str, Any], keys: list[dict[str, Any]]) -> str:
    """Check `checkout["ap2"]["merchant_authorization"]` against `keys` (a profile's `keys`); the
    signing key's kid, or `CheckoutError` (`merchant_unverified`)."""
    ap2 = checkout.get("ap2")
    token = ap2.get("merchant_authorization") if isinstance(ap2, dict) else None
    if not isinstance(token, str) or token.count(".") != 2 or token.split(".")[1] != "":
        raise CheckoutError("the checkout carries no detached merchant authorisation", ErrorCode.MERCHANT_UNVERIFIED)
    header_b64, _, signature = token.split(".")
    try:
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    except ValueError:
        raise CheckoutError("the merchant authorisation's header is not JSON", ErrorCode.MERCHANT_UNVERIFIED) from None
    alg, kid = (header.get("alg"), header.get("kid")) if isinstance(header, dict) else (None, None)
    if alg not in ALGORITHMS or not isinstance(kid, str):
        raise CheckoutError(
            f"merchant authorisation by {alg!r}: not ES256/384/512 with a kid", ErrorCode.MERCHANT_UNVERIFIED
        )
    jwk = next((k for k in keys if k.get("kid") == kid), None)
    if jwk is None or "d" in jwk or jwk.get("crv") != ALGORITHMS[alg]:
        raise CheckoutError(f"no published {alg} key {kid!r} in the merchant's profile", ErrorCode.MERCHANT_UNVERIFIED)
    payload = b64url(canonical(unsigned(checkout)))
    try:
        key = ECKey.import_key({name: jwk[name] for name in PUBLIC_MEMBERS})
        jws.deserialize_compact(f"{header_b64}.{payload}.{signature}", key, algorithms=[alg])
    except (JoseError, ValueError, KeyError):
        raise CheckoutError(
            f"the merchant's signature by {kid!r} does not verify", ErrorCode.MERCHANT_UNVERIFIED
        ) from None
    return kid
