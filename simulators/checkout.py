"""The checkout stand-in: a merchant checkout that places an order only through the consent verifier.

It opens each proposal through the `ConsentVerifier` (which stores the bytes as issued, checks the
risk policy and issues the consent terms) and completes it only with a valid, device-signed,
single-use mandate: everything in `device_sdk.platform.checkout.verifier`. Given the merchant's catalog, it also
refuses a proposal whose names, units, prices, sellers, categories, currency or payee differ from
the catalog, as a merchant re-prices an agent's cart: the read-back is composed from these fields,
so they must be the merchant's, not the agent's. Orders are placed at the merchant stand-in
(`merchant.py`), whose book of orders lives beside the verifier's store: one order per completion key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from device_sdk.platform.checkout.backend import Completion, as_issued
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.protocol.errors import CheckoutError, ErrorCode
from device_sdk.protocol.fields import Outcome
from device_sdk.protocol.messages import (
    CheckoutProposal,
    ConsentTerms,
    IssuedProposal,
    OrderResult,
    OrderStatusResult,
)

from .catalog import Catalog
from .merchant import MerchantStandIn


@dataclass
class CheckoutStandIn:
    """A merchant checkout on a durable verifier; `orders` lists the newest orders this process placed
    (at most `keep_orders`, indexed by order id, which is one per completion key), `placed` counts
    them all; `merchant` keeps every order placed (default: in a file beside the verifier's store).
    A completion costs the same after a million orders as after one: no list of past orders is scanned."""

    verifier: ConsentVerifier
    catalog: Catalog | None = None
    merchant: MerchantStandIn | None = None
    keep_orders: int = 1000
    placed: int = 0
    recent: OrderedDict[str, OrderResult] = field(default_factory=OrderedDict, repr=False)
    """The newest orders placed here, by order id."""

    def __post_init__(self) -> None:
        if self.merchant is None:  # beside a SQLite store; for PostgreSQL in the state directory
            path = self.verifier.db.url.beside(".merchant")
            path.parent.mkdir(parents=True, exist_ok=True)
            self.merchant = MerchantStandIn(path)

    async def open(self, issued: IssuedProposal) -> ConsentTerms:
        proposal = as_issued(issued)
        if self.catalog is not None:
            _check_against(self.catalog, proposal)
        return await self.verifier.db.in_thread(self.verifier.open, issued)

    async def complete(self, completion: Completion) -> OrderResult:
        result = await self.verifier.db.in_thread(self.verifier.complete, completion, self._charge)
        if result.order_id is not None and result.order_id not in self.recent:
            self.placed += 1
            self.recent[result.order_id] = result
            while len(self.recent) > self.keep_orders:
                self.recent.popitem(last=False)
        return result

    @property
    def orders(self) -> list[OrderResult]:
        """The newest orders this process placed, oldest first (at most `keep_orders`)."""
        return list(self.recent.values())

    def _charge(self, proposal: CheckoutProposal, key: str) -> str:
        """The stand-in payment channel ("shop-wallet"): always approves, once per completion key."""
        assert self.merchant is not None
        return self.merchant.place(proposal, key)

    async def status(self, device_id: str, session_id: str, checkout_id: str) -> OrderStatusResult:
        return await self.verifier.db.in_thread(self.verifier.status, device_id, session_id, checkout_id)

    async def settle_pending(self, older_than: float) -> int:
        return await self.verifier.db.in_thread(self.verifier.settle_pending, self._charge, older_than)

    async def cancel(self, checkout_id: str, outcome: Outcome, reason: str) -> None:
        await self.verifier.db.in_thread(self.verifier.cancel, checkout_id, outcome, reason)

    async def hand_over(self, checkout_id: str, device_id: str) -> tuple[str, ConsentTerms]:
        return await self.verifier.db.in_thread(self.verifier.hand_over, checkout_id, device_id)

    async def step_up(self, device_id: str, checkout_id: str, checkout_hash: str, pin: str) -> tuple[str, float]:
        grant = await self.verifier.db.in_thread(
            self.verifier.step_up.prove, device_id, checkout_id, checkout_hash, pin
        )
        return grant.proof, grant.expires_at


def _check_against(catalog: Catalog, proposal: CheckoutProposal) -> None:
    if proposal.currency != catalog.currency:
        raise CheckoutError(f"this merchant sells in {catalog.currency}", ErrorCode.BAD_PROPOSAL)
    for line in proposal.lines:
        product = catalog.product(line.sku)
        if product is None:
            raise CheckoutError(f"no product {line.sku}", ErrorCode.BAD_PROPOSAL)
        local = product.named(proposal.language)
        listed = (
            local.name,
            local.unit,
            product.price_minor,
            catalog.merchant(product.merchant_id, proposal.language),
            product.category,
        )
        if (line.name, line.unit, line.unit_price_minor, line.seller, line.category) != listed:
            raise CheckoutError(f"line {line.sku} differs from the catalog", ErrorCode.BAD_PROPOSAL)
    if proposal.merchant != catalog.payee({line.seller.id for line in proposal.lines}, proposal.language):
        raise CheckoutError("the payee is not the merchant of record", ErrorCode.BAD_PROPOSAL)
