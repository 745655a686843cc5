"""The verifier's tables: each checkout as opened (its exact bytes, nonce and terms) and each
completion's first result under its idempotency key, with the reads its checks rely on.

An accepted completion's row also holds its mandate id and its checkout, both unique: the store
itself makes a mandate single use and a checkout ordered once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from device_sdk.consent.readback import presentation_digest
from device_sdk.protocol.errors import ConsentError, ErrorCode
from device_sdk.protocol.fields import Modality
from device_sdk.protocol.messages import CheckoutProposal, ConsentTerms, OrderResult

from .registry import KeyRecord
from .sql import Connection

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS checkouts (
        checkout_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        raw BLOB NOT NULL,
        hash TEXT NOT NULL,
        nonce TEXT NOT NULL UNIQUE,
        terms TEXT NOT NULL,
        currency TEXT NOT NULL,
        opened_at REAL NOT NULL,
        closed_at REAL
    )""",
    # one row per completion: its first result under its idempotency key; an accepted one also holds
    # the mandate (accepted once), its checkout (ordered once, so its nonce is used once) and the order
    """CREATE TABLE IF NOT EXISTS completions (
        idempotency_key TEXT PRIMARY KEY,
        body_sha256 TEXT NOT NULL,
        checkout_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        result TEXT NOT NULL,
        at REAL NOT NULL,
        mandate_id TEXT UNIQUE,
        ordered_checkout TEXT UNIQUE,
        order_id TEXT UNIQUE,
        total_minor INTEGER,
        currency TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS completions_orders ON completions (device_id, at) WHERE order_id IS NOT NULL",
    # an offer the session's device handed to its paired phone: only that phone's sheet confirms it
    """CREATE TABLE IF NOT EXISTS handovers (
        checkout_id TEXT PRIMARY KEY,
        to_device TEXT NOT NULL,
        terms TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS completions_refusals ON completions (at) WHERE order_id IS NULL",
    "CREATE INDEX IF NOT EXISTS completions_device_refusals ON completions (device_id, at) WHERE order_id IS NULL",
)
KEEP_REFUSALS = 24 * 3600.0
"""Refused completions are kept (answering their idempotency keys) for a day; accepted ones for good."""
KEEP_REFUSALS_PER_DEVICE = 1000
"""At most this many of a device's refused completions are kept, its newest: a device refused again and
again does not grow the store. Nothing a replay check needs is lost: a mandate is made single use, and a
checkout ordered once, by the row of the accepted completion, which is never pruned."""
_REFUSED = "order_id IS NULL AND ordered_checkout IS NULL"


def record_refusal(conn: Connection, key: str, body: str, ids: dict[str, str], exc: ConsentError, now: float) -> None:
    """Keep a refusal's answer under its idempotency key, and prune the refusals past their keeping."""
    result = json.dumps({"refused": exc.code.value, "text": exc.text})
    conn.execute(
        "INSERT INTO completions (idempotency_key, body_sha256, checkout_id, device_id, result, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (key, body, ids["checkout_id"], ids["device_id"], result, now),
    )
    prune_refusals(conn, now, ids["device_id"])


def prune_refusals(conn: Connection, now: float, device_id: str | None = None) -> None:
    """Forget refusals older than `KEEP_REFUSALS`, and `device_id`'s beyond its newest `KEEP_REFUSALS_PER_DEVICE`."""
    conn.execute(f"DELETE FROM completions WHERE {_REFUSED} AND at < ?", (now - KEEP_REFUSALS,))
    if device_id is not None:
        conn.execute(
            "DELETE FROM completions WHERE idempotency_key IN (SELECT idempotency_key FROM completions WHERE"
            f" {_REFUSED} AND device_id = ? ORDER BY at DESC LIMIT ? OFFSET ?)",
            (device_id, 2**62, KEEP_REFUSALS_PER_DEVICE),
        )


@dataclass(frozen=True)
class StoredCheckout:
    """A checkout as one read of the store gives it, with everything its completion is checked against."""

    proposal: CheckoutProposal
    checkout_hash: str
    nonce: str
    terms: ConsentTerms
    ordered: bool
    closed: bool
    digests: dict[Modality, str]
    key: KeyRecord | None = None
    replayed: bool = False
    spent_today: int = 0
    orders_last_minute: int = 0
    handed_to: str | None = None
    """The paired phone the offer was handed to (`handover`), whose key alone may sign for it."""
    still_paired: bool = False
    """Whether that phone is still paired with the session's device."""

    def digest(self, modality: Modality) -> str:
        """The display digest of what the SDK presents for this proposal in `modality`."""
        digest = self.digests.get(modality)
        if digest is None:
            digest = self.digests[modality] = presentation_digest(self.proposal, modality)
        return digest


CHECKOUT_STATE = """
SELECT c.raw, c.hash, c.nonce, c.terms, c.closed_at,
    EXISTS (SELECT 1 FROM completions WHERE ordered_checkout = c.checkout_id),
    EXISTS (SELECT 1 FROM completions WHERE mandate_id = :jti),
    (SELECT CAST(coalesce(sum(total_minor), 0) AS BIGINT) FROM completions
        WHERE ordered_checkout IS NOT NULL AND device_id = c.device_id AND currency = c.currency AND at > :day),
    (SELECT count(*) FROM completions WHERE ordered_checkout IS NOT NULL AND device_id = c.device_id
        AND at > :minute),
    h.to_device, h.terms,
    EXISTS (SELECT 1 FROM pairings p WHERE p.device_id = c.device_id AND p.phone_id = h.to_device
        AND p.ended_at IS NULL),
    k.kid, k.device_id, k.public_key, k.status, k.added_at, k.retired_at
FROM checkouts c LEFT JOIN device_keys k ON k.kid = :kid LEFT JOIN handovers h ON h.checkout_id = c.checkout_id
WHERE c.checkout_id = :checkout
"""
"""The checkout and, in the same read, the mandate's key, whether the mandate or the checkout was used,
the device's orders over the last day and minute, and the hand-over to a paired phone, if any."""


def spending(conn: Connection, proposal: CheckoutProposal, now: float) -> tuple[int, int]:
    """The device's orders in its currency over the last 24 hours (sum), and over the last minute (count)."""
    row = conn.execute(
        "SELECT coalesce(sum(CASE WHEN currency = ? THEN total_minor END), 0), count(CASE WHEN at > ? THEN 1 END)"
        " FROM completions WHERE ordered_checkout IS NOT NULL AND device_id = ? AND at > ?",
        (proposal.currency, now - 60.0, proposal.device_id, now - 86400.0),
    ).fetchone()
    return int(row[0]), int(row[1])


def stored_result(stored: str) -> OrderResult | ConsentError:
    """A completion's first result as stored under its idempotency key: the order, or the refusal."""
    value = json.loads(stored)
    if "refused" in value:
        return ConsentError(value["text"], ErrorCode(value["refused"]))
    return OrderResult.model_validate(value)
