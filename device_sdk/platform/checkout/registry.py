"""The registry of device public keys that the verifier trusts: rotation, revocation, and the
keys retired a short while ago that still verify mandates issued before; and the pairings made at
provisioning (a speaker or glasses with the phone that may confirm for them, `pair`); and what each
device was provisioned as (`describe`, see `profiles`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from device_sdk.consent.keys import PublicKey
from device_sdk.protocol.errors import ErrorCode, KeyStoreError

from .database import Database
from .partners import SCHEMA as PARTNERS
from .partners import partner_of, set_partner
from .profiles import SCHEMA as PROFILES
from .profiles import DeviceProfile, profile_of, set_profile
from .sql import Connection


class KeyStatus(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"
    """Replaced by rotation: still verifies mandates signed before `retired_at`."""
    REVOKED = "revoked"


@dataclass(frozen=True)
class KeyRecord:
    kid: str
    device_id: str
    public: PublicKey
    status: KeyStatus
    added_at: float
    retired_at: float | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...] | list[Any]) -> KeyRecord:
        """From (kid, device_id, public_key, status, added_at, retired_at) as the registry stores them."""
        kid, device_id, raw, status, added_at, retired_at = row
        return cls(kid, device_id, PublicKey(raw), KeyStatus(status), added_at, retired_at)

    def valid_at(self, issued_at: float, now: float) -> bool:
        """Whether a mandate issued at `issued_at` may carry this key's signature at `now`.

        A retired key (rotated out) still verifies mandates issued before the rotation, and only
        for as long as a mandate may live (15 minutes) after it; after a compromise, revoke.
        """
        if self.status is KeyStatus.ACTIVE:
            return True
        return (
            self.status is KeyStatus.RETIRED
            and self.retired_at is not None
            and issued_at < self.retired_at
            and now < self.retired_at + RETIRED_GRACE
        )


RETIRED_GRACE = 900.0
"""Seconds a rotated-out key keeps verifying mandates issued before its rotation."""


SCHEMA = (
    """CREATE TABLE IF NOT EXISTS device_keys (
        kid TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        public_key BLOB NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('active', 'retired', 'revoked')),
        added_at REAL NOT NULL,
        retired_at REAL
    )""",
    "CREATE INDEX IF NOT EXISTS device_keys_device ON device_keys (device_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS device_keys_one_active ON device_keys (device_id) WHERE status = 'active'",
    # a device and the phone whose sheet may confirm its offers when its own modality cannot
    """CREATE TABLE IF NOT EXISTS pairings (
        device_id TEXT NOT NULL,
        phone_id TEXT NOT NULL,
        paired_at REAL NOT NULL,
        ended_at REAL,
        CHECK (device_id != phone_id)
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS pairings_live ON pairings (device_id) WHERE ended_at IS NULL",
)


class DeviceRegistry:
    """The device public keys a verifier trusts, in the verifier's database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema(SCHEMA + PROFILES + PARTNERS)

    def register(self, device_id: str, public: PublicKey) -> str:
        """Register a device's first key (again: no change); a device with another active key rotates."""

        def job(conn: Connection) -> str:
            existing = lookup(conn, public.kid)
            if existing is not None:
                if existing.device_id != device_id or existing.status is not KeyStatus.ACTIVE:
                    raise KeyStoreError(
                        f"key {public.kid} is {existing.status} for {existing.device_id}", ErrorCode.KEY_CONFLICT
                    )
                return public.kid
            if _active(conn, device_id) is not None:
                raise KeyStoreError(f"{device_id} has an active key; rotate it instead", ErrorCode.KEY_CONFLICT)
            _insert(conn, device_id, public)
            return public.kid

        return self.db.call(job)

    def rotate(self, device_id: str, public: PublicKey) -> str:
        """Make `public` the device's key; the old one verifies only mandates issued before now."""

        def job(conn: Connection) -> str:
            existing = lookup(conn, public.kid)
            if existing is not None:
                if existing.device_id == device_id and existing.status is KeyStatus.ACTIVE:
                    return public.kid
                raise KeyStoreError(f"key {public.kid} was used before", ErrorCode.KEY_CONFLICT)
            conn.execute(
                "UPDATE device_keys SET status = 'retired', retired_at = ? WHERE device_id = ? AND status = 'active'",
                (time.time(), device_id),
            )
            _insert(conn, device_id, public)
            return public.kid

        return self.db.call(job)

    def revoke(self, device_id: str) -> int:
        """Revoke every key of the device, and end its pairings either way: none of its mandates
        verifies any more. Returns how many keys."""

        def job(conn: Connection) -> int:
            cur = conn.execute(
                "UPDATE device_keys SET status = 'revoked', retired_at = coalesce(retired_at, ?) "
                "WHERE device_id = ? AND status != 'revoked'",
                (time.time(), device_id),
            )
            _end_pairings(conn, device_id)
            return cur.rowcount

        return self.db.call(job)

    def pair(self, device_id: str, phone_id: str) -> None:
        """Let `phone_id`'s sheet confirm the offers `device_id` hands over (one phone per device: a
        new pairing ends the old one). Both must hold an active key."""

        def job(conn: Connection) -> None:
            if device_id == phone_id:
                raise KeyStoreError("a device cannot be paired with itself", ErrorCode.NOT_PAIRED)
            for which in (device_id, phone_id):
                if _active(conn, which) is None:
                    raise KeyStoreError(f"{which} has no active key: provision it first", ErrorCode.NOT_PAIRED)
            if paired_phone(conn, device_id) == phone_id:
                return
            conn.execute(
                "UPDATE pairings SET ended_at = ? WHERE device_id = ? AND ended_at IS NULL", (time.time(), device_id)
            )
            conn.execute(
                "INSERT INTO pairings (device_id, phone_id, paired_at) VALUES (?, ?, ?)",
                (device_id, phone_id, time.time()),
            )

        self.db.call(job)

    def describe(self, device_id: str, profile: DeviceProfile) -> None:
        """Record what `device_id` was provisioned as: the verifier takes only the modalities it can give."""
        self.db.call(lambda conn: set_profile(conn, device_id, profile))

    def profile(self, device_id: str) -> DeviceProfile | None:
        with self.db.reading() as conn:
            return profile_of(conn, device_id)

    def attribute(self, device_id: str, partner: str, model: str) -> None:
        """Record the hardware partner and device model `device_id` came from: its orders are theirs."""
        self.db.call(lambda conn: set_partner(conn, device_id, partner, model))

    def partner(self, device_id: str) -> tuple[str, str] | None:
        """`(partner, model)` as provisioned, or None."""
        with self.db.reading() as conn:
            return partner_of(conn, device_id)

    def unpair(self, device_id: str) -> None:
        """End the device's pairing: no offer of it can be handed over any more."""
        self.db.call(lambda conn: _end_pairings(conn, device_id))

    def phone_of(self, device_id: str) -> str | None:
        """The phone paired with `device_id`, if any."""
        with self.db.reading() as conn:
            return paired_phone(conn, device_id)

    def records(self, device_id: str | None = None) -> list[KeyRecord]:
        with self.db.reading() as conn:
            if device_id is None:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM device_keys ORDER BY added_at").fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {_COLUMNS} FROM device_keys WHERE device_id = ? ORDER BY added_at", (device_id,)
                ).fetchall()
        return [KeyRecord.from_row(row) for row in rows]

    def public_key(self, kid: str) -> PublicKey | None:
        """The public key named `kid` (whatever its status; the verifier checks that in its transaction)."""
        with self.db.reading() as conn:
            record = lookup(conn, kid)
        return record.public if record else None


_COLUMNS = "kid, device_id, public_key, status, added_at, retired_at"


def lookup(conn: Connection, kid: str) -> KeyRecord | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM device_keys WHERE kid = ?", (kid,)).fetchone()
    return KeyRecord.from_row(row) if row else None


def paired_phone(conn: Connection, device_id: str) -> str | None:
    row = conn.execute(
        "SELECT phone_id FROM pairings WHERE device_id = ? AND ended_at IS NULL", (device_id,)
    ).fetchone()
    return row[0] if row else None


def _end_pairings(conn: Connection, device_id: str) -> None:
    """End every live pairing the device is in, on either side."""
    conn.execute(
        "UPDATE pairings SET ended_at = :at WHERE (device_id = :device OR phone_id = :device) AND ended_at IS NULL",
        {"at": time.time(), "device": device_id},
    )


def _active(conn: Connection, device_id: str) -> str | None:
    row = conn.execute("SELECT kid FROM device_keys WHERE device_id = ? AND status = 'active'", (device_id,)).fetchone()
    return row[0] if row else None


def _insert(conn: Connection, device_id: str, public: PublicKey) -> None:
    conn.execute(
        "INSERT INTO device_keys (kid, device_id, public_key, status, added_at) VALUES (?, ?, ?, 'active', ?)",
        (public.kid, device_id, public.raw, time.time()),
    )
