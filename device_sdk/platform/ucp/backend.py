"""Our checkout on a UCP merchant: devices keep speaking our protocol, the merchant sees UCP and AP2.

`open` creates the merchant's checkout session for the proposal and selects the payment handler
(create, update), and lets the proposal be read back only when every state the merchant returned
verifies (`checks.check_state`: its signature against the profile's keys, a known currency, totals
that add up, not expired) and is the proposal (`check_matches`); then the consent verifier opens it.
`complete` lets the verifier check the device's confirmation; only once it is accepted, the order is
placed (`_place`): the merchant's checkout is read again and must be the one confirmed, the platform
issues the AP2 checkout and payment mandates, and the merchant completes under the completion key.
A refusal before the merchant completes charges nothing and is audited; the device gets its code.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from device_sdk.platform.checkout.backend import Completion, as_issued
from device_sdk.platform.checkout.outcomes import PlaceOrder
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.protocol.errors import CheckoutError, ConsentError, ErrorCode
from device_sdk.protocol.fields import Outcome
from device_sdk.protocol.messages import (
    CheckoutProposal,
    ConsentTerms,
    IssuedProposal,
    OrderResult,
    OrderStatusResult,
)

from .checks import check_matches, check_state, check_unchanged
from .client import UcpClient
from .escalation import STEP_UP_URL, escalated
from .mandates import MandateIssuer
from .signing import checkout_sha256, verify_detached
from .store import SCHEMA, Opened, answered, load, remember

PLACE_TIMEOUT = 30.0
KEPT = 1000
"""How many checkout states, mandates and orders `UcpCheckout` keeps for showing (the newest)."""


@dataclass
class UcpCheckout:
    """A `CheckoutBackend` whose orders are placed at the UCP merchant `client` talks to.

    `states` keeps the checkout states as the merchant returned them, `mandates` the mandates issued
    (checkout id -> {"checkout_mandate", "payment_mandate"}), `ucp_orders` the merchant's orders: the
    newest `KEPT` of each. An open checkout is forgotten once ordered or cancelled.
    `presented` is each checkout as the platform presents it (our checkout id -> UCP checkout): the
    merchant's state, or `requires_escalation` with a `continue_url` (`step_up_url`) while our
    policy's step-up is pending (`escalation.py`); `escalations` keeps those states."""

    verifier: ConsentVerifier
    client: UcpClient
    issuer: MandateIssuer = field(default_factory=MandateIssuer)
    orders: list[OrderResult] = field(default_factory=list)
    states: list[dict[str, Any]] = field(default_factory=list)
    mandates: dict[str, dict[str, str]] = field(default_factory=dict)
    ucp_orders: list[dict[str, Any]] = field(default_factory=list)
    step_up_url: str = STEP_UP_URL
    presented: dict[str, dict[str, Any]] = field(default_factory=dict)
    escalations: list[dict[str, Any]] = field(default_factory=list)
    _opened: dict[str, Opened] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.verifier.db.ensure_schema(SCHEMA)

    @property
    def placed(self) -> int:
        """How many orders this process placed."""
        return len(self.orders)

    async def open(self, issued: IssuedProposal) -> ConsentTerms:
        proposal = as_issued(issued)
        try:
            try:
                checkout = await self._open_at_merchant(proposal)
            except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:  # nothing was ordered: a refusal
                raise CheckoutError(f"the merchant could not be reached: {exc!r}", ErrorCode.INTERNAL) from None
        except CheckoutError as exc:
            await self._audit(proposal, exc, "ucp_open")
            raise
        terms = await self.verifier.db.in_thread(self.verifier.open, issued)
        opened = Opened(proposal, checkout, issued.checkout_hash)
        await self.verifier.db.run(lambda conn: remember(conn, opened))
        self._opened[proposal.checkout_id] = opened
        view = checkout
        if not self.verifier.policy.for_device(proposal.device_id).voice_allowed(proposal):
            view = escalated(checkout, self.step_up_url.format(checkout_id=proposal.checkout_id))
            self.escalations.append(view)
        self.presented[proposal.checkout_id] = view
        return terms

    async def _open_at_merchant(self, proposal: CheckoutProposal) -> dict[str, Any]:
        profile = self.client.profile or await self.client.discover()
        lines = [{"item": {"id": line.sku}, "quantity": line.qty} for line in proposal.lines]
        created = self._verified(
            await self.client.create({"line_items": lines, "currency": proposal.currency}), proposal
        )
        instrument = {
            "id": f"pi_{proposal.checkout_id}",
            "handler_id": profile.handlers[0],
            "type": "wallet",
            "selected": True,
        }
        kept = [
            {"id": line["id"], "item": {"id": line["item"]["id"]}, "quantity": line["quantity"]}
            for line in created["line_items"]
        ]
        update = {"line_items": kept, "payment": {"instruments": [instrument]}}
        return _ready(self._verified(await self.client.update(created["id"], update), proposal))

    def _verified(
        self, checkout: dict[str, Any], proposal: CheckoutProposal, confirmed: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """`checkout` checked (`check_state`, unchanged since `confirmed`, `check_matches`) and kept;
        a malformed one is refused."""
        assert self.client.profile is not None
        self.states.append(checkout)
        try:
            check_state(checkout, self.client.profile.keys, time.time())
            if confirmed is not None:
                check_unchanged(confirmed, checkout)
            check_matches(checkout, proposal)
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckoutError(f"the merchant's checkout is malformed: {exc!r}", ErrorCode.BAD_PROPOSAL) from None
        return checkout

    async def complete(self, completion: Completion) -> OrderResult:
        answer = completion.confirmation
        digest, modality = answer.display_digest, answer.modality.value
        if (opened := self._opened.get(completion.checkout_id)) is not None:
            opened.display_digest, opened.modality = digest, modality
        await self.verifier.db.run(lambda conn: answered(conn, completion.checkout_id, digest, modality))
        place = self._placing(asyncio.get_running_loop())
        result = await self.verifier.db.in_thread(self.verifier.complete, completion, place)
        if all(order.order_id != result.order_id for order in self.orders):
            self.orders.append(result)
            del self.orders[:-KEPT]
        self._forget(completion.checkout_id)
        return result

    def _forget(self, checkout_id: str) -> None:
        self._opened.pop(checkout_id, None)
        del self.states[:-KEPT], self.ucp_orders[:-KEPT], self.escalations[:-KEPT]
        for kept in (self.mandates, self.presented):
            while len(kept) > KEPT:
                del kept[next(iter(kept))]

    def _placing(self, loop: asyncio.AbstractEventLoop) -> PlaceOrder:
        """The verifier's `PlaceOrder` (called on its thread): `_place` on `loop`; a refusal keeps its code."""

        def place(proposal: CheckoutProposal, key: str) -> str:
            future = asyncio.run_coroutine_threadsafe(self._place(proposal, key), loop)
            try:
                return future.result(PLACE_TIMEOUT)
            except ConsentError:
                raise
            except CheckoutError as exc:  # a refusal with its own code: the device is told which
                raise ConsentError(exc.text, exc.code) from None

        return place

    async def _place(self, proposal: CheckoutProposal, key: str) -> str:
        """Runs only after the verifier accepted the confirmation: re-read, mandates, complete."""
        opened = self._opened.get(proposal.checkout_id) or await self.verifier.db.in_thread(self._load, proposal)
        if opened is None:
            raise CheckoutError("no merchant checkout was opened for this proposal", ErrorCode.UNKNOWN_CHECKOUT)
        ucp_id = opened.checkout["id"]
        now = self._verified(await self.client.get(ucp_id), proposal, opened.checkout)
        if now.get("status") == "completed":  # an earlier try completed it and its answer was lost
            done = now  # the same order: nothing is charged again
        else:
            done = await self._complete_at_merchant(opened, _ready(now), key)
        order_ref = done.get("order") or {}
        if done.get("status") != "completed" or not order_ref.get("id") or not order_ref.get("permalink_url"):
            raise CheckoutError(
                f"the merchant did not complete the checkout ({done.get('status')})", ErrorCode.PAYMENT_DECLINED
            )
        order = await self.client.order(order_ref["id"])
        if order.get("checkout_id") != ucp_id or order.get("totals") != opened.checkout["totals"]:
            raise CheckoutError("the merchant's order is not the checkout confirmed", ErrorCode.TOTALS_MISMATCH)
        self.ucp_orders.append(order)
        self.presented[proposal.checkout_id] = done
        return str(order_ref["id"])

    def _load(self, proposal: CheckoutProposal) -> Opened | None:
        """The checkout another gateway (or this one before a restart) opened, from the store."""
        with self.verifier.db.reading() as conn:
            return load(conn, proposal)

    async def _complete_at_merchant(self, opened: Opened, now: dict[str, Any], key: str) -> dict[str, Any]:
        """Issue the mandates for the confirmed state `now` and complete it under `key`; the
        completed state, its signature checked and its terms the confirmed ones."""
        mandates = self._mandates(opened, now, key)
        self.mandates[now["id"]] = mandates
        payment = {
            **now["payment"]["instruments"][0],
            "credential": {"type": "ap2.payment_mandate", "token": mandates["payment_mandate"]},
        }
        body = {"payment": {"instruments": [payment]}, "ap2": {"checkout_mandate": mandates["checkout_mandate"]}}
        done = await self.client.complete(now["id"], body, idempotency_key=key)
        self.states.append(done)
        assert self.client.profile is not None
        verify_detached(done, self.client.profile.keys)
        check_unchanged(opened.checkout, done)
        return done

    def _mandates(self, opened: Opened, checkout: dict[str, Any], key: str) -> dict[str, str]:
        """The AP2 checkout and payment mandates for the confirmed `checkout` (its signed state)."""
        ours = {"checkout_hash": opened.checkout_hash}
        if opened.display_digest is not None and opened.modality is not None:
            ours |= {"display_digest": opened.display_digest, "confirmation_modality": opened.modality}
        bound = {"checkout_id": checkout["id"], "checkout_sha256": checkout_sha256(checkout)}
        if opened.modality == "voice_pin":  # the verifier accepted it with the PIN's proof only
            bound |= {"step_up": {"method": "pin", "modality": "voice_pin", "verified_by": "platform"}}
        assert self.client.profile is not None
        audience = self.client.profile.endpoint  # the merchant's UCP endpoint, as its profile names it
        total = next(entry["amount"] for entry in checkout["totals"] if entry["type"] == "total")
        return {
            "checkout_mandate": self.issuer.issue(
                {**bound, "checkout": checkout}, ours, vct="ap2.checkout_mandate", audience=audience, nonce=key
            ),
            "payment_mandate": self.issuer.issue(
                {**bound, "payment_handler": checkout["payment"]["instruments"][0]["handler_id"],
                 "amount": {"value": total, "currency": checkout["currency"]}},
                {"payer_device": opened.proposal.device_id, "checkout_hash": opened.checkout_hash},
                vct="ap2.payment_mandate", audience=audience, nonce=key,
            ),
        }  # fmt: skip

    async def _audit(self, proposal: CheckoutProposal, exc: CheckoutError, stage: str) -> None:
        ids = {"device_id": proposal.device_id, "session_id": proposal.session_id, "checkout_id": proposal.checkout_id}
        audit = self.verifier.audit
        await self.verifier.db.run(
            lambda conn: audit.append(conn, "refusal", stage=stage, code=exc.code.value, reason=exc.text, **ids)
        )

    async def status(self, device_id: str, session_id: str, checkout_id: str) -> OrderStatusResult:
        return await self.verifier.db.in_thread(self.verifier.status, device_id, session_id, checkout_id)

    async def settle_pending(self, older_than: float) -> int:
        place = self._placing(asyncio.get_running_loop())
        return await self.verifier.db.in_thread(self.verifier.settle_pending, place, older_than)

    async def cancel(self, checkout_id: str, outcome: Outcome, reason: str) -> None:
        await self.verifier.db.in_thread(self.verifier.cancel, checkout_id, outcome, reason)
        self._forget(checkout_id)

    async def hand_over(self, checkout_id: str, device_id: str) -> tuple[str, ConsentTerms]:
        return await self.verifier.db.in_thread(self.verifier.hand_over, checkout_id, device_id)

    async def step_up(self, device_id: str, checkout_id: str, checkout_hash: str, pin: str) -> tuple[str, float]:
        grant = await self.verifier.db.in_thread(
            self.verifier.step_up.prove, device_id, checkout_id, checkout_hash, pin
        )
        view, opened = self.presented.get(checkout_id), self._opened.get(checkout_id)
        if view is not None and view.get("status") == "requires_escalation" and opened is not None:
            self.presented[checkout_id] = opened.checkout  # the step-up is verified: ready_for_complete
        return grant.proof, grant.expires_at


def _ready(checkout: dict[str, Any]) -> dict[str, Any]:
    """A checkout the merchant will complete; its `requires_escalation` is our `step_up_required`:
    the buyer must continue at the merchant's `continue_url`, which the device is told."""
    status = checkout.get("status")
    if status == "requires_escalation":
        raise CheckoutError(
            f"the merchant needs the buyer to continue at {checkout['continue_url']}",
            ErrorCode.STEP_UP_REQUIRED,
            "step_up_required",
        )
    if status != "ready_for_complete":
        raise CheckoutError(f"the merchant's checkout is {status!r}, not ready", ErrorCode.PAYMENT_DECLINED)
    return checkout
