"""The whole flow, device to order, over the embedded broker and over a Mosquitto started here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from device_sdk.bus.mqtt import MqttBus
from device_sdk.device.client import DeviceClient
from device_sdk.device.offer import Offer
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode, RemoteError
from device_sdk.protocol.fields import Decision, Modality, Outcome
from device_sdk.protocol.messages import Error, OrderResult, decode
from device_sdk.protocol.topics import Topics
from simulators.scenario import ShopBackend
from simulators.speaker import SimulatedSpeaker
from tests.conftest import Restartable

T = Topics()


@pytest.fixture
async def backend(broker: Restartable) -> AsyncIterator[ShopBackend]:
    async with ShopBackend(broker.url, confirm_timeout=5.0) as shop:
        yield shop


def device(shop: ShopBackend, broker: Restartable, device_id: str = "speaker-1", **kw: Any) -> DeviceClient:
    """A device with a signing key of its own, enrolled with the shop's verifier."""
    kw.setdefault("resend_after", 0.5)
    return DeviceClient(broker.url, device_id, key=shop.provision(device_id), **kw)


async def test_spoken_request_to_confirmed_order(broker: Restartable, backend: ShopBackend) -> None:
    async with device(backend, broker) as speaker:
        run = await SimulatedSpeaker(speaker).run("buy two packs of AA batteries and a bottle of milk", ["confirm"])
    assert run.result is not None and run.offer is not None
    assert run.result.outcome is Outcome.ORDERED
    assert [(line.sku, line.qty) for line in run.offer.request.proposal.lines] == [("bat-aa-4", 2), ("milk-1l", 1)]
    assert run.result.total_minor == 2 * 1290 + 1250
    assert [order.order_id for order in backend.checkout.orders] == [run.result.order_id]
    assert "2 packs of AA batteries" in run.presented[0]


@pytest.mark.parametrize(
    ("replies", "outcome"),
    [(["cancel"], Outcome.DECLINED), (["hmm", "no thanks"], Outcome.DECLINED), (["hmm", "wait"], Outcome.NOT_CONFIRMED),
     ([], Outcome.NOT_CONFIRMED)],
)  # fmt: skip
async def test_declined_or_unclear_places_no_order(
    broker: Restartable, backend: ShopBackend, replies: list[str], outcome: Outcome
) -> None:
    async with device(backend, broker) as speaker:
        run = await SimulatedSpeaker(speaker).run("order two boxes of masks", replies)
    assert run.result is not None
    assert run.result.outcome is outcome
    assert run.result.order_id is None
    assert backend.checkout.orders == []


async def test_unanswered_proposal_expires_and_a_late_confirm_orders_nothing(broker: Restartable) -> None:
    async with ShopBackend(broker.url, confirm_timeout=0.4) as shop, device(shop, broker) as speaker:
        offer = await speaker.ask("buy a yoga mat")
        result = await next_event(speaker, OrderResult)
        assert result.outcome is Outcome.NOT_CONFIRMED
        assert result.reason == "the confirmation expired"
        late = await speaker.answer(offer, Decision.CONFIRM)
        assert late.outcome is Outcome.NOT_CONFIRMED
        assert shop.checkout.orders == []


async def test_another_device_can_neither_confirm_nor_cancel(broker: Restartable, backend: ShopBackend) -> None:
    async with device(backend, broker, "speaker-1") as owner, device(backend, broker, "speaker-2") as intruder:
        offer = await owner.ask("buy a pair of running shoes")
        for decision in (Decision.CONFIRM, Decision.DECLINE):
            with pytest.raises(RemoteError) as caught:
                await intruder.answer(offer, decision, timeout=5)
            assert caught.value.code == ErrorCode.UNKNOWN_CHECKOUT
        # the same session id on another device is another session: it cannot touch the first one
        own = await intruder.ask("buy a yoga mat", session_id=offer.session_id)
        assert own.request.checkout_id != offer.request.checkout_id
        with pytest.raises(RemoteError) as caught:  # not a checkout its session offered: the store's answer
            await intruder.answer(offer, Decision.CONFIRM, timeout=5)
        assert caught.value.code == ErrorCode.UNKNOWN_CHECKOUT
        assert backend.checkout.orders == []
        result = await owner.answer(offer, Decision.CONFIRM)
    assert result.outcome is Outcome.ORDERED
    assert [o.checkout_id for o in backend.checkout.orders] == [offer.request.checkout_id]


async def test_confirming_one_proposal_twice_places_one_order(broker: Restartable, backend: ShopBackend) -> None:
    async with device(backend, broker) as speaker:
        offer = await speaker.ask("buy three apples")
        mandate = speaker.sign(offer, Modality.VOICE)
        first, second = await asyncio.gather(
            speaker.answer(offer, Decision.CONFIRM, mandate=mandate), answer_raw(speaker, offer, mandate)
        )
        third = await speaker.answer(offer, Decision.CONFIRM)
        declined_after = await speaker.answer(offer, Decision.DECLINE)
    assert first.outcome is Outcome.ORDERED
    assert first.order_id == second.order_id == third.order_id == declined_after.order_id
    assert len(backend.checkout.orders) == 1


async def test_a_confirmation_of_another_text_is_refused(broker: Restartable, backend: ShopBackend) -> None:
    async with device(backend, broker) as speaker:
        offer = await speaker.ask("buy two bottles of shampoo")
        with pytest.raises(RemoteError) as caught:
            await speaker.answer(offer, Decision.CONFIRM, presented="Buy one shampoo for 1.00 CNY?")
        assert caught.value.code == ErrorCode.DISPLAY_MISMATCH
        assert backend.checkout.orders == []
        assert (await speaker.answer(offer, Decision.CONFIRM)).outcome is Outcome.ORDERED


async def test_agent_errors_reach_the_device_with_their_code(broker: Restartable, backend: ShopBackend) -> None:
    async with device(backend, broker) as speaker:
        with pytest.raises(RemoteError) as caught:
            await speaker.ask("buy a spaceship")
        assert caught.value.code == ErrorCode.ITEM_NOT_FOUND
        session = "ses_retry"
        with pytest.raises(RemoteError):
            await speaker.ask("buy a spaceship", session_id=session)
        offer = await speaker.ask("buy two eggs", session_id=session)
        assert offer.request.proposal.lines[0].sku == "eggs-12"


BAD = [
    ("device/speaker-9/up", b"not json", ErrorCode.BAD_JSON),
    ("device/speaker-9/up", b'{"v": 1, "type": "checkout.proposal"}', ErrorCode.BAD_MESSAGE),
    ("device/speaker-9/up", b'{"v": 1, "type": "ping"}', ErrorCode.BAD_MESSAGE),
    ("device/speaker-9/up", b'{"v": 1, "type": "order.result", "session_id": "s", "outcome": "declined"}',
     ErrorCode.UNEXPECTED_MESSAGE),
    ("device/speaker-9/up", b'{"v": 1, "type": "agent.request", "request_id": "r", "device_id": "speaker-1", '
     b'"session_id": "s", "text": "buy milk"}', ErrorCode.WRONG_TOPIC),
    ("device/speaker-9/up", b'{"v": 7, "type": "ping", "seq": 1}', ErrorCode.UNSUPPORTED_VERSION),
    ("device/speaker-9/up", b'{"v": 1, "type": "ping", "seq": 1, "v": 7}', ErrorCode.BAD_JSON),  # a key twice
    ("device/speaker-9/up", b"{" + b" " * 100_000 + b"}", ErrorCode.TOO_LARGE),
    ("device/speaker-9/status", b"[]", ErrorCode.BAD_MESSAGE),
    ("device/speaker-9/status", b'{"v": 1, "type": "ping", "seq": 1}', ErrorCode.UNEXPECTED_MESSAGE),
    ("device/speaker-9/status", b'{"v": 1, "type": "device.status", "device_id": "speaker-1", "online": true}',
     ErrorCode.WRONG_TOPIC),
]  # fmt: skip
BAD_ELSEWHERE = [
    ("device/speaker-9/controller", b"\x00\x01", ErrorCode.BAD_JSON),
    ("gateway/gw-x/status", b'{"v": 1, "type": "gateway.status"}', ErrorCode.BAD_MESSAGE),
    ("agent/request", b"{bad", ErrorCode.BAD_JSON),
    ("agent/request", b'{"v": 1, "type": "ping", "seq": 1}', ErrorCode.UNEXPECTED_MESSAGE),
    ("agent/reply/GATEWAY", b"\xff", ErrorCode.BAD_JSON),
    ("device/bad+id/up", b'{"v": 1, "type": "ping", "seq": 1}', ErrorCode.BAD_MESSAGE),
]


async def test_malformed_payloads_on_every_topic_get_coded_errors(broker: Restartable, backend: ShopBackend) -> None:
    async with MqttBus(broker.url, "fuzzer") as bus:
        down = await bus.subscribe(T.device_down("speaker-9"))
        errors = await bus.subscribe(T.errors())
        for leaf, payload, code in BAD:
            await bus.publish(f"{T.base}/{leaf}", payload)
            assert (await next_error(down)).code == code, (leaf, payload[:60])
        for leaf, payload, code in BAD_ELSEWHERE:
            if leaf == "device/bad+id/up":
                topic = f"{T.base}/device/bad id!/up"
            else:
                topic = f"{T.base}/{leaf.replace('GATEWAY', backend.gateway.gateway_id)}"
            await bus.publish(topic, payload)
            assert (await next_error(errors)).code == code, (leaf, payload[:60])
    # and the gateway and the agent still serve
    async with device(backend, broker, "speaker-9") as speaker:
        run = await SimulatedSpeaker(speaker).run("buy milk", ["confirm"])
    assert run.result is not None and run.result.outcome is Outcome.ORDERED
    assert backend.gateway.refused >= len(BAD) + 3


async def test_broker_restart_mid_session_orders_exactly_once(broker: Restartable, backend: ShopBackend) -> None:
    async with device(backend, broker) as speaker:
        offer = await speaker.ask("buy two bags of rice")
        await broker.restart()
        result = await speaker.answer(offer, Decision.CONFIRM, timeout=20)
        assert result.outcome is Outcome.ORDERED
        again = await speaker.answer(offer, Decision.CONFIRM, timeout=20)
    assert again.order_id == result.order_id
    assert len(backend.checkout.orders) == 1


async def test_broker_down_gives_a_clear_error_then_the_session_resumes(
    broker: Restartable, backend: ShopBackend
) -> None:
    async with device(backend, broker) as speaker:
        offer = await speaker.ask("buy an umbrella")
        await broker.stop()
        with pytest.raises(DeviceSdkError) as caught:
            await speaker.answer(offer, Decision.CONFIRM, timeout=1.0)
        assert caught.value.code in (ErrorCode.TIMEOUT, ErrorCode.NOT_CONNECTED)
        assert backend.checkout.orders == []
        await broker.start()
        result = await speaker.answer(offer, Decision.CONFIRM, timeout=20)
    assert result.outcome is Outcome.ORDERED
    assert len(backend.checkout.orders) == 1


# helpers -----------------------------------------------------------------------------------


async def next_event(speaker: DeviceClient, kind: type[Any], timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        async for event in speaker.events():
            if isinstance(event, kind):
                return event
    raise AssertionError("unreachable")


async def next_error(sub: Any, timeout: float = 5.0) -> Error:
    while True:
        message = decode((await sub.get(timeout)).payload)
        if isinstance(message, Error):
            return message


async def answer_raw(speaker: DeviceClient, offer: Offer, mandate: str | None) -> OrderResult:
    """The same confirmation again, published by hand (as a second press of the same button would)."""
    async with MqttBus(speaker.url, "second-tap") as bus:
        replies = await bus.subscribe(T.device_down(speaker.device_id))
        payload = {
            "v": 1, "type": "confirmation.result", "session_id": offer.session_id,
            "checkout_id": offer.request.checkout_id, "checkout_hash": offer.request.checkout_hash,
            "decision": Decision.CONFIRM, "modality": Modality.VOICE, "display_digest": offer.request.display_digest,
            "mandate": mandate,
        }  # fmt: skip
        await bus.publish(T.device_up(speaker.device_id), json.dumps(payload).encode())
        while True:
            message = decode((await replies.get(10)).payload)
            if isinstance(message, OrderResult):
                return message
