"""AP2 mandates as SD-JWT with key binding, issued by the platform once a device's confirmation is accepted.

The platform is the trusted surface: it issues a mandate only after the consent verifier has accepted
the device-signed confirmation of the exact proposal read back. Each mandate is an SD-JWT (RFC 9901
form `<issuer-jwt>~<disclosure>~...~<kb-jwt>`) signed ES256 by the platform's P-256 key (published
in `jwks()`), with `cnf.jwk` the public half of a key made for that one mandate, which signs the
KB-JWT (`typ: kb+jwt`, `sd_hash` over the SD-JWT, `aud`, `nonce`). Claims named in `disclosed` are
selectively disclosable: only their digests are in the signed payload.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey

from device_sdk.protocol.errors import KeyStoreError

from .signing import b64url, public_jwk

SD_JWT_TYP = "dc+sd-jwt"
KB_JWT_TYP = "kb+jwt"
LIFETIME = 300.0
"""Seconds a mandate is valid for: long enough to complete the checkout it names."""


class MandateIssuer:
    """The platform's mandate signer: one P-256 key (`kid`), issuer `iss`."""

    def __init__(
        self, key: ECKey | None = None, *, kid: str = "platform-mandates-1", issuer: str = "urn:device-sdk:platform"
    ) -> None:
        self.key = key if key is not None else ECKey.generate_key("P-256")
        self.kid = kid
        self.issuer = issuer

    @classmethod
    def load_or_create(cls, path: str | Path, **options: Any) -> MandateIssuer:
        """The issuer whose P-256 key is at `path` (PKCS#8 PEM, owner-only), made there first if there
        is none; its kid is the key's RFC 7638 thumbprint, so its JWKS stays the same across runs."""
        path = Path(path)
        if not path.exists():
            key = ECKey.generate_key("P-256")
            temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(key.as_pem(private=True))
                    out.flush()
                    os.fsync(out.fileno())
                os.link(temporary, path)  # whole or not at all; never over another process's key
            except FileExistsError:
                pass
            except OSError as exc:
                raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from None
            finally:
                temporary.unlink(missing_ok=True)
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyStoreError(f"{path} is accessible by others; chmod 600 it")
            key = ECKey.import_key(path.read_bytes())
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise KeyStoreError(f"{path} holds no readable key: {exc}") from None
        if key.as_dict(private=False).get("crv") != "P-256" or not key.is_private:
            raise KeyStoreError(f"{path} does not hold a P-256 private key")
        return cls(key, kid=key.thumbprint(), **options)

    def jwks(self) -> dict[str, Any]:
        """The platform's public JWKS (no private member)."""
        return {"keys": [public_jwk(self.key, self.kid)]}

    def issue(
        self,
        claims: dict[str, Any],
        disclosed: dict[str, Any],
        *,
        vct: str,
        audience: str,
        nonce: str,
        now: float | None = None,
    ) -> str:
        """An SD-JWT+KB carrying `claims` in the clear and `disclosed` as disclosures."""
        at = int(now if now is not None else time.time())
        holder = ECKey.generate_key("P-256")
        disclosures = [_disclosure(name, value) for name, value in disclosed.items()]
        payload = {
            "iss": self.issuer,
            "iat": at,
            "exp": at + int(LIFETIME),
            "vct": vct,
            "cnf": {"jwk": {k: v for k, v in holder.as_dict(private=False).items() if k in ("kty", "crv", "x", "y")}},
            "_sd_alg": "sha-256",
            "_sd": sorted(_digest(d) for d in disclosures),
            **claims,
        }
        header = {"alg": "ES256", "kid": self.kid, "typ": SD_JWT_TYP}
        signed = jws.serialize_compact(header, _json(payload), self.key, algorithms=["ES256"])
        presented = "~".join([signed, *disclosures]) + "~"
        binding = {"iat": at, "aud": audience, "nonce": nonce, "sd_hash": _digest(presented)}
        kb = jws.serialize_compact({"alg": "ES256", "typ": KB_JWT_TYP}, _json(binding), holder, algorithms=["ES256"])
        return presented + kb


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _disclosure(name: str, value: Any) -> str:
    return b64url(_json([b64url(secrets.token_bytes(16)), name, value]))


def _digest(text: str) -> str:
    return b64url(hashlib.sha256(text.encode("ascii")).digest())
