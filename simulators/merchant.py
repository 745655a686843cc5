"""The merchant's payment channel, as a stand-in with its own durable book of orders.

A real merchant (or payment service) is another system: it keeps its orders whatever happens to
the gateway that asked. This one keeps them in a SQLite file of its own, one order per completion
key, so asking again under the same key (a retry, a restarted gateway settling a pending
completion) gives the same order and places none: the idempotency that `PlaceOrder` requires.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path

from device_sdk.protocol.messages import CheckoutProposal

SCHEMA = """CREATE TABLE IF NOT EXISTS merchant_orders (
    completion_key TEXT PRIMARY KEY,
    order_id TEXT NOT NULL UNIQUE,
    checkout_id TEXT NOT NULL,
    total_minor INTEGER NOT NULL,
    currency TEXT NOT NULL,
    at REAL NOT NULL
)"""


class MerchantStandIn:
    """Places at most one order per completion key, in `path` (None: in memory, for this process)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path if self.path is not None else ":memory:",
            isolation_level=None,
            timeout=30.0,
            check_same_thread=False,
        )
        if self.path is not None:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(SCHEMA)

    def place(self, proposal: CheckoutProposal, key: str) -> str:
        """Charge for `proposal` once per `key` ("shop-wallet" always approves); the order's id."""
        order_id = f"ord_{hashlib.sha256(key.encode()).hexdigest()[:32]}"
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR IGNORE INTO merchant_orders VALUES (?, ?, ?, ?, ?, ?)",
                    (key, order_id, proposal.checkout_id, proposal.total_minor, proposal.currency, time.time()),
                )
                row = self._conn.execute(
                    "SELECT order_id FROM merchant_orders WHERE completion_key = ?", (key,)
                ).fetchone()
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return str(row[0])

    def orders(self, checkout_id: str | None = None) -> list[str]:
        """The ids of the orders placed (for one checkout), oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT order_id FROM merchant_orders WHERE ? IS NULL OR checkout_id = ? ORDER BY at",
                (checkout_id, checkout_id),
            ).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
