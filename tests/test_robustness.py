"""What the review of the spine found, kept fixed: races, wedged sessions, forged carts, ghosts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.bus.mqtt import MqttBus
from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.backend import Completion
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.protocol.errors import BusError, ErrorCode, RemoteError
from device_sdk.protocol.fields import Decision, Modality, Outcome
from device_sdk.protocol.messages import (
    AgentRequest,
    CheckoutProposal,
    ConfirmationRequest,
    OrderResult,
    decode,
)
from device_sdk.protocol.topics import Topics
from simulators.agent_core import CatalogAgent
from simulators.catalog import demo_catalog
from simulators.checkout import CheckoutStandIn
from simulators.scenario import ShopBackend
from tests.conftest import Restartable, keyed

T = Topics()


async def test_two_gateways_starting_together_make_one_offer(mosquitto: MosquittoServer) -> None:
    for attempt in range(3):
        device_id = f"speaker-race-{attempt}"
        async with (
            MqttBus(mosquitto.url, f"tap-{attempt}") as tap,
            ShopBackend(mosquitto.url, gateway_id=f"gw-a{attempt}") as a,
            ShopBackend(mosquitto.url, gateway_id=f"gw-b{attempt}") as b,
        ):
            down = await tap.subscribe(T.device_down(device_id))
            key = a.provision(device_id)
            b.enroll(device_id, key)
            async with DeviceClient(mosquitto.url, device_id, heartbeat=0, key=key) as device:
                offer = await device.ask("buy two bags of rice")
                result = await device.answer(offer, Decision.CONFIRM)
            await asyncio.sleep(0.3)
            offers = []
            while True:
                try:
                    message = decode((await down.get(0.05)).payload)
                except Exception:
                    break
                if isinstance(message, ConfirmationRequest):
                    offers.append(message.checkout_id)
            assert result.outcome is Outcome.ORDERED
            assert offers == [offer.request.checkout_id]  # one gateway answered, once
            assert len(a.checkout.orders) + len(b.checkout.orders) == 1
            assert a.gateway.claims[device_id] == b.gateway.claims[device_id]


async def test_a_long_cart_gets_its_whole_read_back(broker: Restartable) -> None:
    catalog = demo_catalog()
    items = [p.aliases[0] if p.aliases else p.name for p in catalog.products if p.category != "alcohol"][:35]
    async with ShopBackend(broker.url) as shop, keyed(shop, broker) as device:
        offer = await device.ask("buy " + " and ".join(items))
        assert len(offer.request.proposal.lines) == 35
        assert len(offer.readback) > 2000
        assert Modality.VOICE not in offer.request.consent.modalities  # over the voice cap
        shop.verifier.step_up.set_pin(device.device_id, "2468")
        proof = await device.step_up(offer, "2468")
        pin_mandate = device.sign(offer, Modality.VOICE_PIN, step_up=proof)
        result = await device.answer(offer, Decision.CONFIRM, modality=Modality.VOICE_PIN, mandate=pin_mandate)
    assert result.outcome is Outcome.ORDERED


class FlakyCheckout(CheckoutStandIn):
    """Places the order but loses its first `failures` answers, as a payment service that hangs up."""

    def __init__(self, verifier: ConsentVerifier, failures: int) -> None:
        super().__init__(verifier, demo_catalog())
        self.failures = failures

    async def complete(self, completion: Completion) -> OrderResult:
        result = await super().complete(completion)
        if self.failures:
            self.failures -= 1
            raise ConnectionResetError("the payment service hung up")
        return result


async def test_a_lost_checkout_answer_is_retried_by_the_gateway(broker: Restartable) -> None:
    flaky = ShopBackend(broker.url, make_checkout=lambda verifier: FlakyCheckout(verifier, failures=1))
    async with flaky as shop, keyed(shop, broker) as device:
        offer = await device.ask("buy a yoga mat")
        result = await device.answer(offer, Decision.CONFIRM)
        assert [row[0] for row in shop.verifier.orders()] == [result.order_id]  # one order in the durable store
    assert result.outcome is Outcome.ORDERED
    assert [o.order_id for o in shop.checkout.orders] == [result.order_id]


async def test_an_unanswered_completion_never_expires_into_not_confirmed(broker: Restartable) -> None:
    flaky = ShopBackend(  # more failures than the gateway's three tries at once
        broker.url, make_checkout=lambda verifier: FlakyCheckout(verifier, failures=4), confirm_timeout=0.5
    )
    async with flaky as shop, keyed(shop, broker) as device:
        offer = await device.ask("buy a yoga mat")
        with pytest.raises(RemoteError) as caught:
            await device.answer(offer, Decision.CONFIRM)
        assert caught.value.code == ErrorCode.INTERNAL
        await asyncio.sleep(1.0)  # past the offer's expiry: it must not be cancelled now
        later = await device.answer(offer, Decision.DECLINE, timeout=10)  # even a decline finishes the order
    assert later.outcome is Outcome.ORDERED
    assert [o.order_id for o in shop.checkout.orders] == [later.order_id]


async def test_two_calls_in_one_session_each_get_their_own_answer(broker: Restartable) -> None:
    async with ShopBackend(broker.url) as shop, keyed(shop, broker) as device:
        first, second = await asyncio.gather(
            device.ask("buy milk", session_id="ses_two"), device.ask("buy two milk", session_id="ses_two")
        )
    assert first.request.request_id != second.request.request_id
    assert {first.request.proposal.lines[0].qty, second.request.proposal.lines[0].qty} == {1, 2}


class LyingAgent(CatalogAgent):
    """Proposes the catalog's cart with a seller name that reads out a lower total."""

    async def propose(self, request: AgentRequest) -> CheckoutProposal:
        proposal = await super().propose(request)
        line = proposal.lines[0]
        fake = line.seller.model_copy(update={"name": "FreshMart. Total 1.00 CNY"})
        return proposal.model_copy(update={"lines": [line.model_copy(update={"seller": fake})]})


async def test_a_cart_that_differs_from_the_merchant_catalog_is_never_offered(broker: Restartable) -> None:
    async with ShopBackend(broker.url, agent=LyingAgent()) as shop, keyed(shop, broker) as device:
        with pytest.raises(RemoteError) as caught:
            await device.ask("buy a bottle of olive oil")
        assert caught.value.code == ErrorCode.BAD_PROPOSAL
        assert shop.checkout.orders == []


async def test_devices_may_use_the_same_ids(broker: Restartable) -> None:
    async with (
        ShopBackend(broker.url) as shop,
        keyed(shop, broker, "speaker-1") as one,
        keyed(shop, broker, "speaker-2") as two,
    ):
        offers = await asyncio.gather(one.ask("buy milk", session_id="1"), two.ask("buy eggs", session_id="1"))
        results = await asyncio.gather(
            *(d.answer(o, Decision.CONFIRM) for d, o in zip((one, two), offers, strict=True))
        )
    assert [o.request.proposal.lines[0].sku for o in offers] == ["milk-1l", "eggs-12"]
    assert all(r.outcome is Outcome.ORDERED for r in results)
    assert len(shop.checkout.orders) == 2


async def test_a_stale_offer_in_the_session_is_not_taken_for_the_answer(broker: Restartable) -> None:
    async with ShopBackend(broker.url) as shop, keyed(shop, broker) as device:
        first = await device.ask("buy milk", session_id="ses_s")
        async with MqttBus(broker.url, "replayer") as replayer:
            stale = first.request.model_copy(update={"request_id": "req_old"})
            await replayer.publish(T.device_down("speaker-1"), stale.encode())
            second = await device.ask("buy eggs", session_id="ses_s")
    assert second.request.proposal.lines[0].sku == "eggs-12"


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server that accepts and never answers: a broker that hangs before CONNACK."""
    connections: list[int] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], connections
    finally:
        server.close()


async def test_a_connect_that_times_out_leaves_nothing_behind() -> None:
    async with silent_server() as (port, connections):
        bus = MqttBus(f"mqtt://127.0.0.1:{port}", "ghost", connect_timeout=0.5, keepalive=1)
        with pytest.raises(BusError, match="cannot reach"):
            await bus.connect()
        await asyncio.sleep(1.5)
        assert not bus.connected
        assert bus._client.socket() is None or bus._client.socket().fileno() == -1
        assert len(connections) == 1  # no reconnect loop of its own
