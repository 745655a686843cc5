"""The voice's other path on a device with no button: its offer handed to the phone paired with it at
provisioning. The verifier checks the pairing, the phone's sheet confirms and its key signs, the
mandate names `phone_sheet`, both devices hear the result, and the hand-over is on the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import mandate_for
from device_sdk.consent.readback import compose_phone_sheet, display_digest
from device_sdk.device.client import DeviceClient
from device_sdk.device.offer import Offer
from device_sdk.platform.checkout.audit import trail
from device_sdk.platform.checkout.backend import Completion
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.registry import DeviceRegistry
from device_sdk.platform.provisioning.provision import provision, revoke
from device_sdk.protocol.errors import ConsentError, ErrorCode, KeyStoreError, RemoteError
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, Outcome
from device_sdk.protocol.messages import ConfirmationResult, ConsentTerms
from firmware_bridge.phone import HandedOffers
from simulators.catalog import demo_catalog
from simulators.checkout import CheckoutStandIn
from simulators.phone import SimulatedPhone
from simulators.scenario import ShopBackend

ASK = "buy two packs of AA batteries"


@dataclass
class Pair:
    backend: ShopBackend
    speaker: DeviceClient
    phone: DeviceClient
    sheet: SimulatedPhone
    app: HandedOffers | None


@contextlib.asynccontextmanager
async def paired(tap: str = "confirm", *, pair: bool = True, app: bool = True) -> AsyncIterator[Pair]:
    """A speaker and a phone, both provisioned; paired unless `pair` is False; the phone's app (none
    without `app`) shows every offer handed to it on a simulated sheet that the user answers with `tap`."""
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(EmbeddedBroker())
        backend = await stack.enter_async_context(ShopBackend(broker.url, shared=False))
        speaker_key = await asyncio.to_thread(backend.provision, "speaker-1")
        phone_key = await asyncio.to_thread(backend.provision, "phone-1", DeviceKind.PHONE)
        if pair:
            await asyncio.to_thread(backend.verifier.registry.pair, "speaker-1", "phone-1")
        speaker = await stack.enter_async_context(
            DeviceClient(backend.url, "speaker-1", topics=backend.topics, key=speaker_key)
        )
        phone = await stack.enter_async_context(
            DeviceClient(backend.url, "phone-1", topics=backend.topics, key=phone_key, kind=DeviceKind.PHONE)
        )
        sheet = SimulatedPhone("phone-1", phone_key, SigningKey.generate(), tap=tap)  # type: ignore[arg-type]
        handed = await stack.enter_async_context(HandedOffers(phone, sheet, sheet_timeout=5.0)) if app else None
        yield Pair(backend, speaker, phone, sheet, handed)


def kinds(backend: ShopBackend, session_id: str) -> list[str]:
    return [record["kind"] for record in trail(backend.db.path, session_id)]


async def test_the_paired_phone_confirms_what_the_speaker_handed_over() -> None:
    async with paired() as pair:
        earlier = await pair.speaker.ask("buy a pack of socks")  # an order in the store already
        assert (await pair.speaker.answer(earlier, Decision.CONFIRM)).outcome is Outcome.ORDERED
        offer = await pair.speaker.ask(ASK)
        assert await pair.speaker.hand_over(offer) == "phone-1"
        result = await pair.speaker.result(offer, timeout=20)
        assert result.outcome is Outcome.ORDERED and result.order_id
        assert pair.app is not None
        for _ in range(500):  # the phone hears it too
            if pair.app.answered:
                break
            await asyncio.sleep(0.01)
        assert [r.order_id for r in pair.app.answered] == [result.order_id]
        assert pair.sheet.shown == [compose_phone_sheet(offer.request.proposal)]
        last = pair.backend.verifier.last
        assert last is not None and (last.device_id, last.signer, last.modality) == (
            "speaker-1",
            "phone-1",
            "phone_sheet",
        )
        phone_kid = pair.backend.verifier.registry.records("phone-1")[0].kid
        assert last.key_id == phone_kid
        records = trail(pair.backend.db.path, offer.session_id)
        handover = next(r for r in records if r["kind"] == "handover")
        assert handover["to_device"] == "phone-1" and handover["modalities"] == ["phone_sheet"]
        order = [r["kind"] for r in records]
        assert order.index("rendering") < order.index("handover") < order.index("verification") < order.index("order")
        assert len(pair.backend.checkout.orders) == 2


async def test_the_phone_declines_or_leaves_it_and_nothing_is_ordered() -> None:
    for tap, outcome in (("cancel", Outcome.DECLINED), ("unavailable", Outcome.NOT_CONFIRMED)):
        async with paired(tap) as pair:
            offer = await pair.speaker.ask(ASK)
            await pair.speaker.hand_over(offer)
            result = await pair.speaker.result(offer, timeout=20)
            assert result.outcome is outcome and pair.backend.checkout.orders == []


async def test_a_device_paired_with_no_phone_cannot_hand_over_and_still_confirms_itself() -> None:
    async with paired(pair=False) as pair:
        offer = await pair.speaker.ask(ASK)
        with pytest.raises(RemoteError) as refused:
            await pair.speaker.hand_over(offer)
        assert refused.value.code == ErrorCode.NOT_PAIRED
        records = trail(pair.backend.db.path, offer.session_id)
        assert any(r["kind"] == "refusal" and r["stage"] == "handover" for r in records)
        result = await pair.speaker.answer(offer, Decision.CONFIRM)  # its own terms are untouched
        assert result.outcome is Outcome.ORDERED and pair.app is not None and pair.app.answered == []


async def test_after_a_hand_over_only_the_phone_key_signs() -> None:
    async with paired(app=False) as pair:  # nothing answers on the phone
        offer = await pair.speaker.ask(ASK)
        await pair.speaker.hand_over(offer)
        with pytest.raises(RemoteError) as refused:  # the speaker's own voice mandate no longer counts
            await pair.speaker.answer(offer, Decision.CONFIRM, timeout=5)
        assert refused.value.code == ErrorCode.SESSION_NOT_OWNED
        # the checkout refuses it too, past the gateway: the offer's key is now the phone's
        speaker_mandate = pair.speaker.sign(offer, Modality.VOICE)
        with pytest.raises(ConsentError) as caught:
            pair.backend.verifier.complete(completion(offer, speaker_mandate, Modality.VOICE), lambda *_: "ord_x")
        assert caught.value.code == ErrorCode.UNKNOWN_KEY
        assert pair.backend.checkout.orders == []


async def test_a_phone_cannot_confirm_an_offer_that_was_not_handed_to_it() -> None:
    async with paired() as pair:
        offer = await pair.speaker.ask(ASK)
        phone_key = pair.phone.key
        assert phone_key is not None
        text = compose_phone_sheet(offer.request.proposal)
        mandate = mandate_for(offer.request, phone_key, device_id="phone-1", modality=Modality.PHONE_SHEET,
                              display_digest=display_digest(text))  # fmt: skip
        with pytest.raises(ConsentError) as caught:  # paired, but nothing was handed over
            pair.backend.verifier.complete(completion(offer, mandate, Modality.PHONE_SHEET, text), lambda *_: "ord_x")
        assert caught.value.code == ErrorCode.UNKNOWN_KEY
        with pytest.raises(RemoteError) as refused:  # and on the bus, the session is not the phone's
            await pair.phone.answer(offer, Decision.CONFIRM, modality=Modality.PHONE_SHEET, presented=text, timeout=5)
        assert refused.value.code == ErrorCode.UNKNOWN_CHECKOUT
        assert pair.backend.checkout.orders == []


async def test_a_pairing_ended_after_the_hand_over_orders_nothing() -> None:
    async with paired(app=False) as pair:
        offer = await pair.speaker.ask(ASK)
        await pair.speaker.hand_over(offer)
        await asyncio.to_thread(pair.backend.verifier.registry.unpair, "speaker-1")
        text = compose_phone_sheet(offer.request.proposal)
        result = await pair.phone.answer(offer, Decision.CONFIRM, modality=Modality.PHONE_SHEET, presented=text)
        assert result.outcome is Outcome.NOT_CONFIRMED and result.reason and "not_paired" in result.reason
        assert "refusal" in kinds(pair.backend, offer.session_id) and pair.backend.checkout.orders == []


def completion(offer: Offer, mandate: str | None, modality: Modality, presented: str | None = None) -> Completion:
    request = offer.request
    return Completion(
        checkout_id=request.checkout_id,
        checkout_hash=request.checkout_hash,
        device_id="speaker-1",
        session_id=request.session_id,
        confirmation=ConfirmationResult(
            session_id=request.session_id,
            checkout_id=request.checkout_id,
            checkout_hash=request.checkout_hash,
            decision=Decision.CONFIRM,
            modality=modality,
            display_digest=offer.digest(presented),
            mandate=mandate,
        ),
    )


def test_provisioning_pairs_a_device_with_a_provisioned_phone(tmp_path: Path) -> None:
    where = {"directory": tmp_path / "broker", "database": tmp_path / "shop.db"}
    with pytest.raises(KeyStoreError) as caught:  # the phone must be provisioned first
        provision("speaker-1", key_out=tmp_path / "speaker.key", phone="phone-1", **where)  # type: ignore[arg-type]
    assert caught.value.code == ErrorCode.NOT_PAIRED
    provision("phone-1", key_out=tmp_path / "phone.key", kind="phone", **where)  # type: ignore[arg-type]
    done = provision("speaker-1", key_out=tmp_path / "speaker.key", phone="phone-1", rotate=True, **where)  # type: ignore[arg-type]
    assert done.phone == "phone-1" and done.as_dict()["phone"] == "phone-1"
    with Database(where["database"]) as db:
        assert DeviceRegistry(db).phone_of("speaker-1") == "phone-1"
    revoke("phone-1", **where)  # type: ignore[arg-type]
    with Database(where["database"]) as db:
        assert DeviceRegistry(db).phone_of("speaker-1") is None  # a revoked phone confirms for no one


async def test_a_checkout_that_fails_the_hand_over_leaves_the_offer_with_the_device() -> None:
    class Broken(CheckoutStandIn):
        async def hand_over(self, checkout_id: str, device_id: str) -> tuple[str, ConsentTerms]:
            raise RuntimeError("the backend's bug")

    async with (
        EmbeddedBroker() as broker,
        ShopBackend(broker.url, shared=False, make_checkout=lambda v: Broken(v, demo_catalog())) as shop,
    ):
        key = await asyncio.to_thread(shop.provision, "speaker-1")
        async with DeviceClient(broker.url, "speaker-1", topics=shop.topics, key=key) as speaker:
            offer = await speaker.ask(ASK)
            with pytest.raises(RemoteError) as failed:
                await speaker.hand_over(offer, timeout=10)
            assert failed.value.code == ErrorCode.INTERNAL
            assert (await speaker.answer(offer, Decision.CONFIRM)).outcome is Outcome.ORDERED
