"""The UCP checkouts a gateway opened, in the platform's store: any gateway, or one restarted, can settle them.

Beside each of our checkouts it keeps the merchant's checkout as last verified before the read-back
(the JSON the merchant signed), our checkout hash, and once the device answers, the display digest
and modality its mandates carry. A completion whose answer from the merchant was lost is then asked
again by whichever gateway settles it (`settle_pending`), under the same completion key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from device_sdk.platform.checkout.sql import Connection
from device_sdk.protocol.messages import CheckoutProposal

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ucp_checkouts (
        checkout_id TEXT PRIMARY KEY,
        ucp_checkout TEXT NOT NULL,
        checkout_hash TEXT NOT NULL,
        display_digest TEXT,
        modality TEXT,
        opened_at REAL NOT NULL
    )""",
)


@dataclass
class Opened:
    """A proposal opened at the merchant: its checkout as verified before the read-back, our
    checkout hash, and what the device confirmed on (once it answered)."""

    proposal: CheckoutProposal
    checkout: dict[str, Any]
    checkout_hash: str
    display_digest: str | None = None
    modality: str | None = None


def remember(conn: Connection, opened: Opened) -> None:
    conn.execute(
        "INSERT INTO ucp_checkouts (checkout_id, ucp_checkout, checkout_hash, opened_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (checkout_id) DO UPDATE SET ucp_checkout = excluded.ucp_checkout,"
        " checkout_hash = excluded.checkout_hash, opened_at = excluded.opened_at",
        (opened.proposal.checkout_id, json.dumps(opened.checkout), opened.checkout_hash, time.time()),
    )


def answered(conn: Connection, checkout_id: str, display_digest: str, modality: str) -> None:
    conn.execute(
        "UPDATE ucp_checkouts SET display_digest = ?, modality = ? WHERE checkout_id = ?",
        (display_digest, modality, checkout_id),
    )


def load(conn: Connection, proposal: CheckoutProposal) -> Opened | None:
    row = conn.execute(
        "SELECT ucp_checkout, checkout_hash, display_digest, modality FROM ucp_checkouts WHERE checkout_id = ?",
        (proposal.checkout_id,),
    ).fetchone()
    if row is None:
        return None
    return Opened(proposal, json.loads(row[0]), row[1], row[2], row[3])
