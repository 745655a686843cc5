"""The reference agent core: the demo catalog and a command parser behind the `AgentCore` interface.

It stands in for the real shopping agent; the SDK reaches it only through the bus, hosted by
`device_sdk.agent.AgentWorker`.
"""

from __future__ import annotations

from device_sdk.messages import AgentRequest, CheckoutProposal, ProposalLine, new_id, now

from .catalog import MARKETPLACE, Catalog, demo_catalog
from .command_parser import CommandParser

__all__ = ["MARKETPLACE", "CatalogAgent"]


class CatalogAgent:
    """Proposes a cart from a catalog for each request; one seller is also the payee, else the marketplace."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or demo_catalog()
        self.parser = CommandParser(self.catalog)

    async def propose(self, request: AgentRequest) -> CheckoutProposal:
        lines = [
            ProposalLine(
                sku=parsed.product.sku,
                name=parsed.product.name,
                qty=parsed.qty,
                unit=parsed.product.unit,
                unit_price_minor=parsed.product.price_minor,
                line_total_minor=parsed.qty * parsed.product.price_minor,
                seller=self.catalog.merchant(parsed.product.merchant_id),
                category=parsed.product.category,
            )
            for parsed in self.parser.parse(request.text)
        ]
        return CheckoutProposal(
            checkout_id=new_id("co"),
            request_id=request.request_id,
            device_id=request.device_id,
            session_id=request.session_id,
            merchant=self.catalog.payee({line.seller.id for line in lines}),
            currency=self.catalog.currency,
            lines=lines,
            total_minor=sum(line.line_total_minor for line in lines),
            created_at=now(),
        )
