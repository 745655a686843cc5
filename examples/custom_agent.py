"""Plug your own agent into the SDK: implement `AgentCore`, host it with `AgentWorker`.

Runs on its own: an embedded broker, the checkout stand-in on a consent verifier (its store and
audit log in a temporary SQLite file), a gateway, and one device with its own signing key:

    .venv/bin/python examples/custom_agent.py
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from device_sdk import Decision, DeviceClient, MqttBus, SigningKey
from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.platform.agent import AgentWorker
from device_sdk.platform.checkout.audit import AuditLog, verify_log
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.profiles import DeviceProfile
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.platform.gateway.gateway import Gateway
from device_sdk.protocol.errors import AgentError, ErrorCode
from device_sdk.protocol.fields import DeviceKind, new_id, now
from device_sdk.protocol.messages import AgentRequest, CheckoutProposal, Merchant, ProposalLine
from simulators.checkout import CheckoutStandIn

CAFE = Merchant(id="m-cafe", name="Corner Cafe")


class CoffeeAgent:
    """Knows one thing: coffee. A real agent would call its model and catalogue here."""

    async def propose(self, request: AgentRequest) -> CheckoutProposal:
        if "coffee" not in request.text.lower():
            raise AgentError("this agent only sells coffee", ErrorCode.ITEM_NOT_FOUND)
        line = ProposalLine(
            sku="flat-white", name="Flat white", qty=1, unit="cup", unit_price_minor=2800, line_total_minor=2800,
            seller=CAFE, category="grocery",
        )  # fmt: skip
        return CheckoutProposal(
            checkout_id=new_id("co"), request_id=request.request_id, device_id=request.device_id,
            session_id=request.session_id, merchant=CAFE, currency="CNY", lines=[line], total_minor=2800,
            created_at=now(),
        )  # fmt: skip


async def main() -> None:
    with tempfile.TemporaryDirectory() as state, Database(Path(state) / "shop.db") as db:
        audit = AuditLog.open(db)  # its checkpoint key is made beside the database
        verifier = ConsentVerifier(db, audit, audience="shop-checkout:cafe")
        device_key = SigningKey.generate()  # on a real device: SigningKey.load_or_create(path), at provisioning
        verifier.registry.register("kitchen-speaker", device_key.public)
        verifier.registry.describe("kitchen-speaker", DeviceProfile.of(DeviceKind.SPEAKER))  # what it may confirm by
        async with (
            EmbeddedBroker() as broker,
            MqttBus(broker.url, "coffee-agent") as agent_bus,
            AgentWorker(agent_bus, CoffeeAgent(), shared=False),
            Gateway(broker.url, CheckoutStandIn(verifier), audit=audit),
            DeviceClient(broker.url, "kitchen-speaker", key=device_key) as speaker,
        ):
            offer = await speaker.ask("get me a coffee")
            print("speaker says:", offer.readback)
            result = await speaker.answer(offer, Decision.CONFIRM, heard="yes")
            print("outcome:", result.outcome, result.order_id)
        report = verify_log(db.path)
        print(f"audit log: {report.records} records, intact: {report.ok}")


if __name__ == "__main__":
    asyncio.run(main())
