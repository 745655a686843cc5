"""Issue 18, finding 1: a crash after commit tells the truth.

A gateway runs in a process of its own (the reference agent, the checkout stand-in on the consent
verifier, the merchant's book of orders in SQLite files) and is killed with SIGKILL at one step of a
confirmed checkout. A second gateway process on the same files takes the device over; the device
resends its confirmation (the same bytes, the same idempotency key) and asks `order.status`. The
merchant holds exactly one order whatever the step, and the device's view is the store's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.backend import Completion
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.outcomes import completion_key, status
from device_sdk.platform.checkout.store_url import StoreUrl
from device_sdk.protocol.errors import ConsentError, ErrorCode, RemoteError
from device_sdk.protocol.fields import Decision, Outcome
from device_sdk.protocol.messages import CheckoutProposal, OrderResult
from simulators.catalog import demo_catalog
from simulators.checkout import CheckoutStandIn
from simulators.merchant import MerchantStandIn
from simulators.scenario import ShopBackend
from tests.conftest import keyed
from tests.consent_kit import Shop, open_shop

STEPS = ("before_verify", "before_checkout", "before_result", "before_answer")
"""Where the first gateway dies: with the confirmation received and nothing checked; with the mandate
admitted and marked used, the merchant not asked; with the merchant's order placed and not stored;
with the result stored and the device not told."""


class CrashingCheckout(CheckoutStandIn):
    """The checkout stand-in of a gateway process that kills itself (SIGKILL) at `crash_at`."""

    crash_at: str | None = None

    async def complete(self, completion: Completion) -> OrderResult:
        self._crash("before_verify")
        result = await super().complete(completion)
        self._crash("before_answer")
        return result

    def _charge(self, proposal: CheckoutProposal, key: str) -> str:
        self._crash("before_checkout")
        order_id = super()._charge(proposal, key)
        self._crash("before_result")
        return order_id

    def _crash(self, step: str) -> None:
        if step == self.crash_at:
            os.kill(os.getpid(), signal.SIGKILL)


def _gateway(url: str, database: str, gateway_id: str, crash_at: str | None, seed: bytes | None, ready: Any) -> None:
    """A gateway process: serves until killed; enrolls the device's key when given its seed."""

    def checkout(verifier: Any) -> CheckoutStandIn:
        made = CrashingCheckout(verifier, demo_catalog())
        made.crash_at = crash_at
        return made

    async def serve() -> None:
        backend = ShopBackend(BrokerUrl.parse(url), database=database, gateway_id=gateway_id, make_checkout=checkout)
        async with backend:
            if seed is not None:
                backend.enroll("speaker-1", SigningKey(Ed25519PrivateKey.from_private_bytes(seed)))
            ready.set()
            await asyncio.Event().wait()

    asyncio.run(serve())


class Gateways:
    """Gateway processes on one broker and one store, started and killed by the test."""

    def __init__(self, url: BrokerUrl, database: Path) -> None:
        self.url, self.database = url, database
        self.context = multiprocessing.get_context("spawn")
        self.started: list[Any] = []

    async def start(self, gateway_id: str, crash_at: str | None = None, seed: bytes | None = None) -> Any:
        ready = self.context.Event()
        process = self.context.Process(
            target=_gateway, args=(str(self.url), str(self.database), gateway_id, crash_at, seed, ready), daemon=True
        )
        process.start()
        self.started.append(process)
        assert await asyncio.to_thread(ready.wait, 120), f"{gateway_id} did not start"
        return process

    def stop(self) -> None:
        for process in self.started:
            if process.is_alive():
                process.kill()
            process.join(30)


@pytest.fixture
def gateways(mosquitto: MosquittoServer, tmp_path: Path) -> Iterator[Gateways]:
    running = Gateways(mosquitto.url, tmp_path / "shop.db")
    try:
        yield running
    finally:
        running.stop()


def stored(database: Path, session_id: str, checkout_id: str) -> tuple[Any, list[str]]:
    """The store's view of the checkout, and the orders the verifier recorded for it."""
    with Database(database) as db, db.reading() as conn:
        found = status(conn, "speaker-1", session_id, checkout_id)
        orders = [r[0] for r in conn.execute("SELECT order_id FROM completions WHERE order_id IS NOT NULL")]
    return found, orders


@pytest.mark.parametrize("step", STEPS)
async def test_finding_1_a_gateway_killed_at_each_step_orders_once_and_the_device_hears_the_truth(
    gateways: Gateways, step: str
) -> None:
    seed = os.urandom(32)
    first = await gateways.start("gw-first", crash_at=step, seed=seed)
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(seed))
    merchant = MerchantStandIn(gateways.database.with_name("shop.db.merchant"))
    async with DeviceClient(gateways.url, "speaker-1", key=key, resend_after=0.5) as device:
        offer = await device.ask("buy a yoga mat")
        answering = asyncio.create_task(device.answer(offer, Decision.CONFIRM, timeout=120))
        await asyncio.to_thread(first.join, 120)
        assert first.exitcode == -signal.SIGKILL  # killed at the step, not ended some other way
        placed_before = merchant.orders(offer.request.checkout_id)
        assert len(placed_before) == (1 if step in ("before_result", "before_answer") else 0)
        assert not answering.done()  # the device was told nothing, neither an order nor a refusal
        await gateways.start("gw-second")  # on the same store, with no session in memory
        result = await answering  # the device's own retries: the same confirmation, the same key
        asked = await device.order_status(offer)
    placed = merchant.orders(offer.request.checkout_id)
    assert len(placed) == 1  # exactly one order, wherever the crash was
    assert placed_before in ([], placed)  # an order placed before the crash was found, not placed again
    assert result.outcome is Outcome.ORDERED and result.order_id == placed[0]
    in_store, orders = stored(gateways.database, offer.session_id, offer.request.checkout_id)
    assert orders == placed
    assert asked.state == in_store.state == "ended"
    assert asked.result == in_store.result == result  # the device's final view is the store's


async def test_finding_1_a_second_gateway_answers_a_resent_confirmation_and_order_status(gateways: Gateways) -> None:
    seed = os.urandom(32)
    first = await gateways.start("gw-first", seed=seed)
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(seed))
    async with DeviceClient(gateways.url, "speaker-1", key=key, resend_after=0.5) as device:
        offer = await device.ask("buy a yoga mat")
        result = await device.answer(offer, Decision.CONFIRM)
        first.kill()  # SIGKILL after the device heard of its order
        await asyncio.to_thread(first.join, 30)
        await gateways.start("gw-second")
        again = await device.answer(offer, Decision.CONFIRM, timeout=60)  # resent as it was: the same key
        asked = await device.order_status(offer, timeout=30)
    assert result.outcome is Outcome.ORDERED
    assert again == result and asked.result == result
    merchant = MerchantStandIn(gateways.database.with_name("shop.db.merchant"))
    assert merchant.orders() == [result.order_id]


async def test_finding_1_order_status_is_answered_only_to_the_checkouts_device(store: str | Path) -> None:
    """Through the gateway, on a SQLite file and on PostgreSQL."""
    async with (
        EmbeddedBroker() as broker,
        ShopBackend(broker.url, database=store) as shop,
        keyed(shop, broker) as owner,
        keyed(shop, broker, "speaker-2") as intruder,
    ):
        offer = await owner.ask("buy a yoga mat")
        open_now = await owner.order_status(offer)
        with pytest.raises(RemoteError) as caught:
            await intruder.order_status(offer, timeout=10)
        result = await owner.answer(offer, Decision.CONFIRM)
        ended = await owner.order_status(offer)
    assert caught.value.code is ErrorCode.UNKNOWN_CHECKOUT
    assert open_now.state == "open" and open_now.result is None
    assert ended.state == "ended" and ended.result == result


@pytest.fixture
def shop(store: str | Path) -> Iterator[Shop]:
    """The verifier's store on SQLite and on PostgreSQL."""
    yield from open_shop(store)


def test_finding_1_a_pending_completion_is_settled_under_the_same_key_never_twice(shop: Shop, tmp_path: Path) -> None:
    merchant = MerchantStandIn(tmp_path / "merchant.db")
    asked: list[str] = []

    def hangs_up(proposal: CheckoutProposal, key: str) -> str:
        asked.append(key)
        merchant.place(proposal, key)  # the order is placed, then the answer is lost
        raise ConnectionResetError("the merchant hung up")

    offer = shop.offer()
    completion = shop.confirm(offer)
    with pytest.raises(ConnectionResetError):
        shop.verifier.complete(completion, hangs_up)
    pending = shop.verifier.status(offer.proposal.device_id, offer.session_id, offer.checkout_id)
    assert pending.state == "pending"
    replay = shop.completion(offer, completion.confirmation.mandate)  # the mandate is marked used already
    with pytest.raises(ConsentError) as caught:
        shop.verifier.complete(replay, merchant.place)
    assert caught.value.code is ErrorCode.MANDATE_REPLAYED
    assert shop.verifier.settle_pending(merchant.place, older_than=3600.0) == 0  # too young for the sweep
    assert shop.verifier.settle_pending(merchant.place) == 1
    assert shop.verifier.settle_pending(merchant.place) == 0  # nothing pending any more
    ended = shop.verifier.status(offer.proposal.device_id, offer.session_id, offer.checkout_id)
    key = completion_key(offer.checkout_id, completion.idempotency_key)
    assert asked == [key]
    assert merchant.orders() == [ended.result.order_id if ended.result else None]
    assert shop.verifier.complete(completion, merchant.place) == ended.result  # the device's retry: the same
    assert [row[0] for row in shop.verifier.orders()] == merchant.orders()
    trail = [kind for (kind,) in _kinds(shop.db.url, offer.session_id)]
    assert trail.count("verification") == 1 and trail.count("order") == 1


def _kinds(path: StoreUrl, session_id: str) -> list[tuple[str]]:
    with Database(path) as db, db.reading() as conn:
        return conn.execute("SELECT kind FROM audit WHERE session_id = ? ORDER BY seq", (session_id,)).fetchall()


def test_finding_1_a_refused_payment_is_stored_with_the_session(shop: Shop) -> None:
    from device_sdk.protocol.errors import CheckoutError

    def declines(proposal: CheckoutProposal, key: str) -> str:
        raise CheckoutError("insufficient funds")

    offer = shop.offer()
    with pytest.raises(ConsentError):
        shop.verifier.complete(shop.confirm(offer), declines)
    ended = shop.verifier.status(offer.proposal.device_id, offer.session_id, offer.checkout_id)
    assert ended.state == "ended" and ended.result is not None
    assert ended.result.outcome is Outcome.NOT_CONFIRMED and ended.result.order_id is None
    assert (ended.result.reason or "").startswith("payment_declined")
    assert shop.verifier.orders() == []
    assert shop.verifier.complete(shop.confirm(offer), lambda p, k: f"ord_{k}").outcome is Outcome.ORDERED
