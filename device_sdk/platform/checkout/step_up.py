"""The step-up the platform checks: a PIN set at provisioning, a single-use proof, and the verifier's
check that a confirmation's modality is one its signer can give.

- The PIN is kept as a salted scrypt hash (`hashlib.scrypt`, 16 random bytes of salt, N=2^15,
  r=8, p=1; the parameters are stored with the hash), never the PIN.
- The device sends the PIN its user said or typed (`step_up`); `StepUp.prove` checks it against the
  hash for one open checkout of that device. Every try is counted before the slow hash runs, so
  parallel guesses cannot pass the limit: `MAX_TRIES` wrong PINs in a row lock the device's step-up
  for `LOCKOUT` seconds. Each try, right or wrong, and each lockout is in the audit log.
- A right PIN gives a proof: 256 random bits, stored as their SHA-256, bound to the device, the
  checkout and its hash, usable once before it expires. The device signs it into its `voice_pin`
  mandate; `check_confirmation` (in the verifier's transaction) accepts a `voice_pin` mandate only
  with a proof that is this device's, for this checkout, unexpired and unused, and spends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device_sdk.consent.mandate import MandateClaims
from device_sdk.protocol.errors import ConfigError, ConsentError, ErrorCode
from device_sdk.protocol.fields import Modality, sha256_hex

from .audit import AuditLog
from .database import Database
from .profiles import check_fits
from .sql import Connection

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS device_pins (
        device_id TEXT PRIMARY KEY,
        pin_hash TEXT NOT NULL,
        set_at REAL NOT NULL,
        tries INTEGER NOT NULL DEFAULT 0,
        locked_until REAL
    )""",
    """CREATE TABLE IF NOT EXISTS step_ups (
        proof_sha256 TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        checkout_id TEXT NOT NULL,
        checkout_hash TEXT NOT NULL,
        issued_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS step_ups_expiry ON step_ups (expires_at)",
)
MAX_TRIES = 5
"""Wrong PINs in a row before the lockout."""
LOCKOUT = 900.0
"""Seconds a device's step-up stays locked after `MAX_TRIES` wrong PINs."""
PROOF_LIFETIME = 300.0
"""Seconds a proof may wait for its mandate."""
KEEP_PROOFS = 24 * 3600.0
SCRYPT = {"n": 2**15, "r": 8, "p": 1}
_PIN = re.compile(r"[0-9]{4,12}")


def check_pin(pin: str) -> str:
    """`pin` when it is one (4 to 12 digits), else `ConfigError`."""
    if not isinstance(pin, str) or not _PIN.fullmatch(pin):
        raise ConfigError("a PIN is 4 to 12 digits")
    return pin


def hash_pin(pin: str) -> str:
    """`scrypt$N$r$p$salt$hash` (base64url) of `pin`, with a fresh 16-byte salt."""
    check_pin(pin)
    salt = secrets.token_bytes(16)
    digest = _scrypt(pin, salt, SCRYPT["n"], SCRYPT["r"], SCRYPT["p"])
    return "$".join(["scrypt", str(SCRYPT["n"]), str(SCRYPT["r"]), str(SCRYPT["p"]), _b64(salt), _b64(digest)])


def pin_matches(pin: str, stored: str) -> bool:
    """Whether `pin` is the one `stored` (from `hash_pin`) was made of, in constant time."""
    scheme, n, r, p, salt, digest = stored.split("$")
    if scheme != "scrypt":
        return False
    expected = base64.urlsafe_b64decode(digest + "==")
    return hmac.compare_digest(_scrypt(pin, base64.urlsafe_b64decode(salt + "=="), int(n), int(r), int(p)), expected)


def _scrypt(pin: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n + 2**20, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Grant:
    """A right PIN's proof (give it to the device only) and when it stops being accepted."""

    proof: str
    expires_at: float


class StepUp:
    """PINs and step-up proofs in the verifier's database."""

    def __init__(self, db: Database, audit: AuditLog | None, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.audit = audit
        self.clock = clock
        db.ensure_schema(SCHEMA)

    def set_pin(self, device_id: str, pin: str) -> None:
        """Keep the salted hash of `device_id`'s PIN (replacing any earlier one, and its lockout)."""
        stored = hash_pin(pin)
        self.db.call(
            lambda conn: conn.execute(
                "INSERT INTO device_pins (device_id, pin_hash, set_at) VALUES (?, ?, ?) ON CONFLICT (device_id)"
                " DO UPDATE SET pin_hash = excluded.pin_hash, set_at = excluded.set_at, tries = 0, locked_until = NULL",
                (device_id, stored, self.clock()),
            )
        )

    def prove(self, device_id: str, checkout_id: str, checkout_hash: str, pin: str) -> Grant:
        """Check the PIN `device_id` sent for its open checkout; the proof, or `ConsentError`
        (`step_up_failed` with the tries left, `step_up_locked`, `modality_not_supported` without a
        PIN, `unknown_checkout`...). The try is counted before the hash is checked."""
        reserved = self.db.call(lambda conn: self._reserve(conn, device_id, checkout_id, checkout_hash))
        if isinstance(reserved, ConsentError):
            raise reserved
        stored, session_id = reserved
        right = isinstance(pin, str) and _PIN.fullmatch(pin) is not None and pin_matches(pin, stored)
        ids = {"device_id": device_id, "session_id": session_id, "checkout_id": checkout_id}
        settled = self.db.call(lambda conn: self._settle(conn, ids, checkout_hash, right))
        if isinstance(settled, ConsentError):
            raise settled
        return settled

    def _reserve(
        self, conn: Connection, device_id: str, checkout_id: str, checkout_hash: str
    ) -> tuple[str, str] | ConsentError:
        now = self.clock()
        checkout = conn.execute(
            "SELECT c.session_id, c.hash, c.closed_at IS NOT NULL"
            " OR EXISTS (SELECT 1 FROM completions o WHERE o.ordered_checkout = c.checkout_id)"
            " FROM checkouts c WHERE c.checkout_id = ? AND c.device_id = ?",
            (checkout_id, device_id),
        ).fetchone()
        ids = {"device_id": device_id, "session_id": checkout[0] if checkout else None, "checkout_id": checkout_id}
        if checkout is None:
            return ConsentError(f"{device_id} has no checkout {checkout_id}", ErrorCode.UNKNOWN_CHECKOUT)
        if checkout[1] != checkout_hash:
            return self._refuse(conn, ids, "the step-up names another version of the cart", ErrorCode.HASH_MISMATCH)
        if checkout[2]:
            return self._refuse(conn, ids, f"checkout {checkout_id} was closed", ErrorCode.CHECKOUT_CLOSED)
        row = conn.execute(
            "SELECT pin_hash, tries, locked_until FROM device_pins WHERE device_id = ?", (device_id,)
        ).fetchone()
        if row is None:
            text = f"{device_id} has no PIN: set one with device-sdk provision --pin-file"
            return self._refuse(conn, ids, text, ErrorCode.MODALITY_NOT_SUPPORTED)
        stored, tries, locked_until = row
        if locked_until is not None and locked_until <= now:
            tries, locked_until = 0, None  # the lockout is over
        if locked_until is not None or tries >= MAX_TRIES:
            until = locked_until or now + LOCKOUT
            text = f"too many wrong PINs: step-up is locked for {max(until - now, 0):.0f} s"
            return self._refuse(conn, ids, text, ErrorCode.STEP_UP_LOCKED)
        conn.execute(
            "UPDATE device_pins SET tries = ?, locked_until = NULL WHERE device_id = ?", (tries + 1, device_id)
        )
        return stored, checkout[0]

    def _settle(self, conn: Connection, ids: dict[str, str], checkout_hash: str, right: bool) -> Grant | ConsentError:
        now, device_id = self.clock(), ids["device_id"]
        if not right:
            (tries,) = conn.execute("SELECT tries FROM device_pins WHERE device_id = ?", (device_id,)).fetchone()
            if tries >= MAX_TRIES:
                conn.execute("UPDATE device_pins SET locked_until = ? WHERE device_id = ?", (now + LOCKOUT, device_id))
                self._record(conn, ids, outcome="locked", tries=tries, locked_until=now + LOCKOUT)
                return ConsentError(
                    f"{tries} wrong PINs: step-up is locked for {LOCKOUT:.0f} s", ErrorCode.STEP_UP_LOCKED
                )
            self._record(conn, ids, outcome="wrong_pin", tries=tries, tries_left=MAX_TRIES - tries)
            return ConsentError(f"wrong PIN: {MAX_TRIES - tries} tries left", ErrorCode.STEP_UP_FAILED)
        conn.execute("UPDATE device_pins SET tries = 0, locked_until = NULL WHERE device_id = ?", (device_id,))
        conn.execute("DELETE FROM step_ups WHERE expires_at < ?", (now - KEEP_PROOFS,))
        grant = Grant(secrets.token_urlsafe(32), now + PROOF_LIFETIME)
        conn.execute(
            "INSERT INTO step_ups (proof_sha256, device_id, checkout_id, checkout_hash, issued_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (sha256_hex(grant.proof), device_id, ids["checkout_id"], checkout_hash, now, grant.expires_at),
        )
        self._record(conn, ids, outcome="proved", proof_sha256=sha256_hex(grant.proof), expires_at=grant.expires_at)
        return grant

    def _refuse(self, conn: Connection, ids: dict[str, str | None], text: str, code: ErrorCode) -> ConsentError:
        if self.audit is not None:
            self.audit.append(conn, "refusal", stage="step_up", code=code.value, reason=text, **ids)
        return ConsentError(text, code)

    def _record(self, conn: Connection, ids: dict[str, str], **fields: Any) -> None:
        if self.audit is not None:
            self.audit.append(conn, "step_up", **ids, **fields)


def check_confirmation(conn: Connection, signer: str, claims: MandateClaims, now: float) -> None:
    """In the verifier's transaction, once every other check passed: the signer can confirm by the
    mandate's modality, and a `voice_pin` mandate carries an unspent proof of a PIN checked for this
    device and checkout (spent here: it proves one confirmation)."""
    check_fits(conn, signer, claims.modality)
    if claims.modality is not Modality.VOICE_PIN:
        return
    if claims.step_up is None:
        raise ConsentError("a voice_pin confirmation needs the platform's proof of the PIN", ErrorCode.STEP_UP_REQUIRED)
    proof = sha256_hex(claims.step_up)
    row = conn.execute(
        "SELECT device_id, checkout_id, checkout_hash, expires_at, used_at FROM step_ups WHERE proof_sha256 = ?",
        (proof,),
    ).fetchone()
    if row is None or (row[0], row[1], row[2]) != (signer, claims.checkout_id, claims.checkout_hash):
        raise ConsentError("the step-up proof is not one issued for this checkout", ErrorCode.STEP_UP_REQUIRED)
    if row[4] is not None:
        raise ConsentError("the step-up proof was used already", ErrorCode.STEP_UP_REQUIRED)
    if row[3] <= now:
        raise ConsentError("the step-up proof has expired: say the PIN again", ErrorCode.STEP_UP_REQUIRED)
    conn.execute("UPDATE step_ups SET used_at = ? WHERE proof_sha256 = ?", (now, proof))
