"""The checkout stand-in: places an order only for a confirmed, unchanged proposal, once.

It re-checks on its own what the gateway checked (defence in depth): the device and session
that own the proposal, the checkout hash, the display digest of the SDK's read-back, and the
decision. Given the merchant's catalog, it also refuses a proposal whose names, units, prices,
sellers, currency or payee differ from the catalog, as a merchant re-prices an agent's cart:
the read-back is composed from these fields, so they must be the merchant's, not the agent's.
The device-signed mandate and its fail-closed verifier replace the trust in the gateway's
topic-derived device id in the consent issue, through the same `Completion`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from device_sdk.agent import IssuedProposal
from device_sdk.checkout import Completion
from device_sdk.errors import CheckoutError, ErrorCode
from device_sdk.messages import CheckoutProposal, Decision, OrderResult, Outcome, decode, new_id
from device_sdk.readback import compose_readback, display_digest

from .catalog import Catalog


@dataclass
class _Checkout:
    proposal: CheckoutProposal
    checkout_hash: str
    state: str = "open"  # open, ordered, closed
    result: OrderResult | None = None
    idempotency_key: str | None = None


@dataclass
class CheckoutStandIn:
    """An in-memory merchant checkout; `orders` lists every order placed, in order."""

    catalog: Catalog | None = None
    orders: list[OrderResult] = field(default_factory=list)
    _checkouts: dict[str, _Checkout] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def open(self, issued: IssuedProposal) -> None:
        try:
            proposal = decode(issued.raw)  # the bytes as issued, not the parsed copy
        except ValueError as exc:
            raise CheckoutError(f"malformed proposal: {exc}", ErrorCode.BAD_PROPOSAL) from None
        if not isinstance(proposal, CheckoutProposal) or proposal != issued.proposal:
            raise CheckoutError("the proposal does not match its bytes", ErrorCode.BAD_PROPOSAL)
        if self.catalog is not None:
            _check_against(self.catalog, proposal)
        async with self._lock:
            if proposal.checkout_id in self._checkouts:
                raise CheckoutError(f"checkout {proposal.checkout_id} exists already", ErrorCode.BAD_PROPOSAL)
            self._checkouts[proposal.checkout_id] = _Checkout(proposal, issued.checkout_hash)

    async def complete(self, completion: Completion) -> OrderResult:
        async with self._lock:
            checkout = self._checkouts.get(completion.checkout_id)
            if checkout is None:
                raise CheckoutError(f"no checkout {completion.checkout_id}", ErrorCode.UNKNOWN_CHECKOUT)
            if checkout.state == "ordered" and checkout.result is not None:
                if completion.idempotency_key != checkout.idempotency_key:
                    raise CheckoutError("this checkout was ordered under another key", ErrorCode.CHECKOUT_CLOSED)
                return checkout.result
            if checkout.state != "open":
                raise CheckoutError(f"checkout {completion.checkout_id} is closed", ErrorCode.CHECKOUT_CLOSED)
            self._verify(checkout, completion)
            proposal = checkout.proposal
            result = OrderResult(
                session_id=proposal.session_id,
                checkout_id=proposal.checkout_id,
                outcome=Outcome.ORDERED,
                order_id=new_id("ord"),
                total_minor=proposal.total_minor,
                currency=proposal.currency,
            )
            checkout.state, checkout.result, checkout.idempotency_key = "ordered", result, completion.idempotency_key
            self.orders.append(result)
            return result

    @staticmethod
    def _verify(checkout: _Checkout, completion: Completion) -> None:
        proposal, answer = checkout.proposal, completion.confirmation
        if (completion.device_id, completion.session_id) != (proposal.device_id, proposal.session_id):
            raise CheckoutError("confirmed by a device that does not own the session", ErrorCode.SESSION_NOT_OWNED)
        if answer.session_id != proposal.session_id or answer.checkout_id != proposal.checkout_id:
            raise CheckoutError("the confirmation names another checkout", ErrorCode.STALE_CHECKOUT)
        if completion.checkout_hash != checkout.checkout_hash or answer.checkout_hash != checkout.checkout_hash:
            raise CheckoutError("the cart changed after it was shown", ErrorCode.HASH_MISMATCH)
        if answer.display_digest != display_digest(compose_readback(proposal)):
            raise CheckoutError("the user was shown something else", ErrorCode.DISPLAY_MISMATCH)
        if answer.decision is not Decision.CONFIRM:
            raise CheckoutError("the user did not confirm", ErrorCode.NOT_CONFIRMED)

    async def cancel(self, checkout_id: str, outcome: Outcome, reason: str) -> None:
        async with self._lock:
            checkout = self._checkouts.get(checkout_id)
            if checkout is not None and checkout.state == "open":
                checkout.state = "closed"


def _check_against(catalog: Catalog, proposal: CheckoutProposal) -> None:
    if proposal.currency != catalog.currency:
        raise CheckoutError(f"this merchant sells in {catalog.currency}", ErrorCode.BAD_PROPOSAL)
    for line in proposal.lines:
        product = catalog.product(line.sku)
        if product is None:
            raise CheckoutError(f"no product {line.sku}", ErrorCode.BAD_PROPOSAL)
        listed = (product.name, product.unit, product.price_minor, catalog.merchant(product.merchant_id))
        if (line.name, line.unit, line.unit_price_minor, line.seller) != listed:
            raise CheckoutError(f"line {line.sku} differs from the catalog", ErrorCode.BAD_PROPOSAL)
    if proposal.merchant != catalog.payee({line.seller.id for line in proposal.lines}):
        raise CheckoutError("the payee is not the merchant of record", ErrorCode.BAD_PROPOSAL)
