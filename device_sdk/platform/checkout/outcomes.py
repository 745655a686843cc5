"""Each admitted completion's outcome: durable before the merchant is asked, and findable after.

A completion is settled in two steps. The transaction that admits it (every check passed) writes its
row in `completions` with the mandate's and the checkout's single-use marks and no order yet: it is
*pending*. Then the merchant is asked, outside any transaction, under the completion's
`completion_key` (derived from the checkout and the device's idempotency key, so every retry asks
under the same key and the merchant places at most one order for it); then the same row takes the
order id, or the merchant's refusal. A crash anywhere leaves either no mark (the device's resent
confirmation is checked afresh) or a pending row, which any gateway settles by asking the merchant
again under the same key: never a second order.

`status` says how a checkout stands, for a device's `order.status` and for a confirmation that a
restarted gateway never saw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from device_sdk.protocol.errors import CheckoutError, ConsentError, ErrorCode
from device_sdk.protocol.fields import Outcome, sha256_hex
from device_sdk.protocol.messages import CheckoutProposal, ConsentTerms, OrderResult, OrderStatusResult, decode

from .audit import AuditLog
from .consent_store import stored_result
from .database import Database
from .disclosure import sponsored_by
from .partners import attribution
from .sql import Connection

PlaceOrder = Callable[[CheckoutProposal, str], str]
"""The merchant's payment channel: `place(proposal, completion_key)` charges for the proposal and
returns the order id, or raises `CheckoutError` when the payment is declined (a refusal,
`payment_declined`); any other exception leaves the outcome unknown (the completion stays pending
and is asked again). It is asked again under the same key after a crash, so the key must make it
idempotent: the same key gives the same order and one charge, as payment APIs' idempotency keys do."""

PENDING = json.dumps({"pending": True})
"""The result of a completion that was admitted and whose order is not yet known."""

SCHEMA = (
    "CREATE INDEX IF NOT EXISTS completions_pending ON completions (at)"
    " WHERE ordered_checkout IS NOT NULL AND order_id IS NULL",
    # what the daily cap and the velocity limit count: orders placed and orders being placed
    "CREATE INDEX IF NOT EXISTS completions_spent ON completions (device_id, at) WHERE ordered_checkout IS NOT NULL",
)


def completion_key(checkout_id: str, idempotency_key: str) -> str:
    """The key the merchant is asked under: one per checkout and device idempotency key."""
    return "ck_" + sha256_hex(f"{checkout_id}:{idempotency_key}")[:40]


@dataclass(frozen=True)
class Pending:
    """An admitted completion whose order is not yet known."""

    idempotency_key: str
    proposal: CheckoutProposal
    payment_handler: str

    @property
    def completion_key(self) -> str:
        return completion_key(self.proposal.checkout_id, self.idempotency_key)

    @property
    def ids(self) -> dict[str, str]:
        p = self.proposal
        return {"device_id": p.device_id, "session_id": p.session_id, "checkout_id": p.checkout_id}


@dataclass(frozen=True)
class Verification:
    """An accepted mandate: what was checked, and the order it gave."""

    mandate_id: str
    key_id: str
    device_id: str
    session_id: str
    checkout_id: str
    modality: str
    order: OrderResult
    signer: str
    """The device whose key signed: the session's, or the paired phone it handed the offer to."""
    initiated_by: str | None = None
    """`agent`: the mandate says the session began with a suggestion (docs/consent.md, "Suggestions")."""

    def as_dict(self) -> dict[str, Any]:
        return {
            **({"initiated_by": self.initiated_by} if self.initiated_by else {}),
            "accepted": True,
            "mandate_id": self.mandate_id,
            "key_id": self.key_id,
            "device_id": self.device_id,
            "signer": self.signer,
            "session_id": self.session_id,
            "checkout_id": self.checkout_id,
            "modality": self.modality,
            "order_id": self.order.order_id,
            "checks": list(CHECKS),
        }


CHECKS = (
    "form",
    "key",
    "signature",
    "checkout",
    "hash",
    "device",
    "session",
    "amount",
    "payee",
    "audience",
    "nonce",
    "expiry",
    "display",
    "single_use",
    "policy",
    "step_up",
)


def admit(conn: Connection, pending: Pending, body: str, mandate_id: str, now: float) -> None:
    """In the verifier's transaction: the pending row, which marks the mandate and the checkout used."""
    p = pending.proposal
    conn.execute(
        "INSERT INTO completions (idempotency_key, body_sha256, checkout_id, device_id, result, at, mandate_id,"
        " ordered_checkout, total_minor, currency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (pending.idempotency_key, body, p.checkout_id, p.device_id, PENDING, now, mandate_id, p.checkout_id,
         p.total_minor, p.currency),
    )  # fmt: skip


def pending_of(conn: Connection, key: str) -> Pending | None:
    """The pending completion under idempotency key `key`, or None when it is not pending."""
    row = conn.execute(
        "SELECT c.raw, c.terms FROM completions o JOIN checkouts c ON c.checkout_id = o.ordered_checkout"
        " WHERE o.idempotency_key = ? AND o.result = ?",
        (key, PENDING),
    ).fetchone()
    if row is None:
        return None
    proposal = decode(row[0])
    assert isinstance(proposal, CheckoutProposal)
    return Pending(key, proposal, ConsentTerms.model_validate_json(row[1]).payment_handler)


def pending_keys(conn: Connection, before: float) -> list[str]:
    """The idempotency keys of completions admitted before `before` and still pending, oldest first."""
    rows = conn.execute(
        "SELECT idempotency_key FROM completions WHERE ordered_checkout IS NOT NULL AND order_id IS NULL"
        " AND at < ? AND result = ? ORDER BY at",
        (before, PENDING),
    ).fetchall()
    return [row[0] for row in rows]


def settle(db: Database, audit: AuditLog, pending: Pending, place: PlaceOrder) -> OrderResult | ConsentError:
    """Ask the merchant under the completion key, then store its answer in the pending row (an answer
    stored meanwhile by another settler wins: the merchant gave both the same order)."""
    placed: str | ConsentError
    try:
        placed = place(pending.proposal, pending.completion_key)
    except ConsentError as exc:
        placed = exc
    except CheckoutError as exc:  # the payment channel said no: a refusal like any other
        placed = ConsentError(f"the payment was declined: {exc.text}", ErrorCode.PAYMENT_DECLINED)
    return db.call(lambda conn: _store(conn, audit, pending, placed))


def _store(
    conn: Connection, audit: AuditLog, pending: Pending, placed: str | ConsentError
) -> OrderResult | ConsentError:
    p, key = pending.proposal, pending.idempotency_key
    row = conn.execute("SELECT result FROM completions WHERE idempotency_key = ?", (key,)).fetchone()
    if row is None:
        raise ConsentError("the completion is no longer stored", ErrorCode.UNKNOWN_CHECKOUT)
    if row[0] != PENDING:
        return stored_result(row[0])
    if isinstance(placed, ConsentError):  # no order: the checkout may be confirmed again, not by this mandate
        refusal = json.dumps({"refused": placed.code.value, "text": placed.text})
        conn.execute("UPDATE completions SET result = ?, ordered_checkout = NULL WHERE idempotency_key = ?",
                     (refusal, key))  # fmt: skip
        audit.append(conn, "refusal", stage="payment", code=placed.code.value, reason=placed.text, **pending.ids)
        return placed
    order = OrderResult(session_id=p.session_id, checkout_id=p.checkout_id, outcome=Outcome.ORDERED,
                        order_id=placed, total_minor=p.total_minor, currency=p.currency)  # fmt: skip
    conn.execute("UPDATE completions SET result = ?, order_id = ? WHERE idempotency_key = ?",
                 (order.model_dump_json(), placed, key))  # fmt: skip
    audit.append(conn, "order", order_id=placed, total_minor=p.total_minor, currency=p.currency,
                 payee=p.merchant.id, payment_handler=pending.payment_handler,
                 completion_key=pending.completion_key, **pending.ids,
                 **attribution(conn, p.device_id), **sponsored_by(p))  # fmt: skip
    return order


def status(conn: Connection, device_id: str, session_id: str, checkout_id: str) -> OrderStatusResult:
    """How the checkout of a session stands for its device (or the phone it was handed to): its
    admitted completion (pending or its result), else its last refused one, else its cancellation,
    else open. `ConsentError(unknown_checkout)` for a checkout that is not theirs."""
    row = conn.execute(
        "SELECT c.device_id, c.session_id, c.closed_at, h.to_device FROM checkouts c"
        " LEFT JOIN handovers h ON h.checkout_id = c.checkout_id WHERE c.checkout_id = ?",
        (checkout_id,),
    ).fetchone()
    if row is None or row[1] != session_id or device_id not in (row[0], row[3]):
        raise ConsentError(f"{device_id} has no checkout {checkout_id} in session {session_id}",
                           ErrorCode.UNKNOWN_CHECKOUT)  # fmt: skip
    owner, _, closed_at, _ = row
    ids: dict[str, Any] = {"session_id": session_id, "checkout_id": checkout_id}
    found = conn.execute("SELECT result FROM completions WHERE ordered_checkout = ?", (checkout_id,)).fetchone()
    if found is None:  # no admitted completion: its last refused one, if any
        found = conn.execute(
            "SELECT result FROM completions WHERE checkout_id = ? AND device_id = ? AND ordered_checkout IS NULL"
            " AND order_id IS NULL ORDER BY at DESC LIMIT 1",
            (checkout_id, owner),
        ).fetchone()
    if found is not None and found[0] == PENDING:
        return OrderStatusResult(state="pending", **ids)
    if found is not None:
        result = stored_result(found[0])
        if isinstance(result, ConsentError):
            result = refused(session_id, checkout_id, result)
        return OrderStatusResult(state="ended", result=result, **ids)
    if closed_at is None:
        return OrderStatusResult(state="open", **ids)
    cancels = conn.execute(
        "SELECT body FROM audit WHERE session_id = ? AND kind = 'cancel' ORDER BY seq DESC", (session_id,)
    ).fetchall()  # a session's few records: read by the index on session_id, its checkout's found here
    records = (json.loads(row[0]) for row in cancels)
    cancel = next((body for body in records if body.get("checkout_id") == checkout_id),
                  {"outcome": Outcome.NOT_CONFIRMED.value, "reason": "closed without an order"})  # fmt: skip
    outcome, reason = cancel["outcome"], cancel["reason"]
    return OrderStatusResult(state="ended", result=OrderResult(outcome=Outcome(outcome), reason=reason, **ids), **ids)


def refused(session_id: str, checkout_id: str, exc: CheckoutError) -> OrderResult:
    """The result a refused completion gives its session, as the gateway tells it."""
    return OrderResult(session_id=session_id, checkout_id=checkout_id, outcome=Outcome(exc.outcome),
                       reason=f"{exc.code}: {exc.text}")  # fmt: skip
