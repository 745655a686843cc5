"""Ed25519 keys: a device's signing key in a file only its owner can read, and the registry of
device public keys that the verifier trusts, with rotation and revocation.

A key is named by its RFC 7638 JWK thumbprint (`kid`), so a mandate's header says which key
signed it and the registry says which device that key belongs to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc.jwk import OKPKey

from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import ErrorCode, KeyStoreError


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyStoreError("an Ed25519 public key is 32 bytes", ErrorCode.KEY_FILE)

    @cached_property
    def kid(self) -> str:
        """RFC 7638 thumbprint: SHA-256 of the canonical JWK, base64url."""
        jwk = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64url(self.raw)}, separators=(",", ":"))
        return b64url(hashlib.sha256(jwk.encode()).digest())

    def jwk(self) -> OKPKey:
        """The key as joserfc's JWK object."""
        return self._jwk

    @cached_property
    def _jwk(self) -> OKPKey:
        return OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": b64url(self.raw)})

    def key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key().verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """From base64url raw bytes, a JWK (JSON) or a PEM SubjectPublicKeyInfo."""
        text = text.strip()
        try:
            if text.startswith("{"):
                return cls(b64url_decode(strict_json.loads(text)["x"]))
            if text.startswith("-----BEGIN"):
                loaded = serialization.load_pem_public_key(text.encode())
                if not isinstance(loaded, Ed25519PublicKey):
                    raise KeyStoreError("not an Ed25519 public key")
                return cls(loaded.public_bytes_raw())
            return cls(b64url_decode(text))
        except KeyStoreError:
            raise
        except Exception as exc:  # any text at all: a coded error
            raise KeyStoreError(f"not an Ed25519 public key: {type(exc).__name__}") from None


class SigningKey:
    """An Ed25519 private key. Keep it in a file with `save` (mode 0600) and `load` it back."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = PublicKey(private.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def jwk(self) -> OKPKey:
        """The private key as joserfc's JWK object (for signing a JWS)."""
        raw = self._private.private_bytes_raw()
        return OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": b64url(self.public.raw), "d": b64url(raw)})

    @property
    def private(self) -> Ed25519PrivateKey:
        return self._private

    def save(self, path: str | Path) -> Path:
        """Write the key as PKCS#8 PEM to a new file that only its owner can read or write."""
        path = Path(path)
        pem = self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
            os.link(temporary, path)  # appears whole, or not at all; never replaces a file
        except FileExistsError:
            raise KeyStoreError(f"{path} exists already; a key file is never overwritten") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from None
        finally:
            temporary.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        """Read a key file; refuse one that its group or others may read or write."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyStoreError(f"{path} is accessible by others (mode {stat.filemode(mode)}); chmod 600 it")
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise KeyStoreError(f"{path} holds no readable key: {exc}") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise KeyStoreError(f"{path} does not hold an Ed25519 key")
        return cls(loaded)

    @classmethod
    def load_or_create(cls, path: str | Path) -> SigningKey:
        """The key at `path`, made there first if there is none (safe when processes race)."""
        path = Path(path)
        if not path.exists():
            key = cls.generate()
            try:
                key.save(path)
                return key
            except KeyStoreError:
                pass  # another process made it first: use theirs
        return cls.load(path)
