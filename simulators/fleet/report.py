"""The fleet bench's figures: latency percentiles over the measured window and by minute, and the fate
of every confirmation and decline checked against the store and the merchant's book of orders."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_sdk.platform.checkout.database import Database


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p95 and p99 of `values` (ms), nearest rank; None for each with no values."""
    ordered = sorted(values)

    def rank(q: float) -> float | None:
        if not ordered:
            return None
        return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 1)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99)}


def in_window(stamped: list[tuple[float, float]], seconds: float) -> list[float]:
    return [ms for at, ms in stamped if 0 <= at <= seconds]


def p95_by_minute(stamped: list[tuple[float, float]], seconds: float) -> list[float | None]:
    """The p95 of each full minute of the window (none for a window under a minute)."""
    minutes = int(seconds // 60)
    buckets: list[list[float]] = [[] for _ in range(minutes)]
    for at, ms in stamped:
        if 0 <= at < minutes * 60:
            buckets[int(at // 60)].append(ms)
    return [percentiles(bucket)["p95"] for bucket in buckets]


@dataclass
class Ledger:
    """What the store and the merchant hold for the fleet's checkouts."""

    merchant_orders: dict[str, list[str]]
    """checkout id → the merchant's order ids for it."""
    store_orders: Counter[str]
    """checkout id → completions in the store that ordered it."""
    closed: set[str]
    """Checkouts the store closed."""
    cancelled: set[str]
    """Checkouts with a `cancel` record in the audit log."""


def read_ledger(database: str, state: Path | None = None) -> Ledger:
    """The store at `database` (SQLite or PostgreSQL, through the stores' own interface) and the
    merchant's book beside it (`StoreUrl.beside`; for PostgreSQL, in the gateways' state directory
    `state`, default the state directory of this process)."""
    merchant: dict[str, list[str]] = {}
    with Database(database) as db, db.reading() as conn:
        stored = Counter(
            row[0] for row in conn.execute("SELECT ordered_checkout FROM completions WHERE order_id IS NOT NULL")
        )
        closed = {row[0] for row in conn.execute("SELECT checkout_id FROM checkouts WHERE closed_at IS NOT NULL")}
        bodies = [row[0] for row in conn.execute("SELECT body FROM audit WHERE kind = 'cancel'")]
        book = db.url.beside(".merchant", state)
    cancelled = {json.loads(body).get("checkout_id") for body in bodies}
    if book.exists():
        with contextlib.closing(sqlite3.connect(f"file:{book}?mode=ro", uri=True)) as book_conn:
            for checkout_id, order_id in book_conn.execute("SELECT checkout_id, order_id FROM merchant_orders"):
                merchant.setdefault(checkout_id, []).append(order_id)
    return Ledger(merchant, stored, closed, cancelled)


def reconcile(confirmed: list[dict[str, Any]], declined: list[dict[str, Any]], ledger: Ledger) -> dict[str, Any]:
    """Every confirmation ends as exactly one order the device saw, or a refusal it saw and no order.

    - lost: the device saw its order but the merchant has none, or the device saw neither an order
      nor a refusal and the merchant has none;
    - duplicated: more than one order (at the merchant or in the store) for one checkout;
    - unseen: the merchant placed the order but the device saw a refusal or nothing;
    - a decline left open: its checkout not closed in the store, or no cancel record for it.
    """
    lost = duplicated = unseen = refused = 0
    refusals: Counter[str] = Counter()
    unseen_seen: Counter[str] = Counter()
    for fate in confirmed:
        checkout = fate["checkout_id"]
        orders = ledger.merchant_orders.get(checkout, [])
        if len(orders) > 1 or ledger.store_orders.get(checkout, 0) > 1:
            duplicated += 1
        seen = fate.get("seen")
        if seen == "ordered":
            lost += not orders or fate.get("order_id") not in orders
        elif orders:
            unseen += 1
            unseen_seen[str(fate.get("code") or fate.get("outcome") or fate.get("seen"))] += 1
        elif seen == "refused":
            refused += 1
            refusals[str(fate.get("code") or fate.get("outcome"))] += 1
        else:
            lost += 1
    open_ = [f for f in declined if f["checkout_id"] not in ledger.closed or f["checkout_id"] not in ledger.cancelled]
    placed = sum(len(ledger.merchant_orders.get(fate["checkout_id"], [])) for fate in confirmed)
    return {
        "orders_confirmed": len(confirmed),
        "orders_placed": placed,
        "orders_refused_seen": refused,
        "refusals": dict(refusals),
        "orders_lost": lost,
        "orders_duplicated": duplicated,
        "orders_unseen": unseen,
        "orders_unseen_seen": dict(unseen_seen),
        "declines": len(declined),
        "declines_left_open": len(open_),
        "declines_left_open_seen": dict(
            Counter(str(f.get("code") or f.get("outcome") or f.get("seen")) for f in open_)
        ),
    }
