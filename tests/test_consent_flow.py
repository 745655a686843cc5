"""Consent over the bus: devices, the gateway and the checkout's verifier, end to end. A confirmation
without a valid mandate for exactly the offered cart never orders, and the audit log shows why."""

from __future__ import annotations

import pytest

from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import MandateClaims, sign_mandate, unverified_claims
from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.audit import trail
from device_sdk.protocol.errors import ErrorCode, RemoteError
from device_sdk.protocol.fields import Decision, Modality, Outcome
from simulators.scenario import ShopBackend
from tests.conftest import EmbeddedRestartable, Restartable, keyed


async def test_a_device_without_a_key_cannot_order(broker: Restartable) -> None:
    async with ShopBackend(broker.url) as shop, DeviceClient(broker.url, "speaker-1") as device:
        offer = await device.ask("buy milk")
        result = await device.answer(offer, Decision.CONFIRM)
        assert result.outcome is Outcome.NOT_CONFIRMED
        assert (result.reason or "").startswith("mandate_missing")
        assert shop.checkout.orders == [] and shop.verifier.orders() == []
        codes = [r.get("code") for r in trail(shop.db.path, offer.session_id) if r["kind"] == "refusal"]
        assert codes == ["mandate_missing"]


async def test_a_mandate_from_an_earlier_session_is_refused(broker: Restartable) -> None:
    async with ShopBackend(broker.url) as shop, keyed(shop, broker) as device:
        first = await device.ask("buy milk")
        old = device.sign(first, Modality.VOICE)
        assert (await device.answer(first, Decision.CONFIRM, mandate=old)).outcome is Outcome.ORDERED
        second = await device.ask("buy milk")
        replay = await device.answer(second, Decision.CONFIRM, mandate=old)
        assert replay.outcome is Outcome.NOT_CONFIRMED and (replay.reason or "").startswith("stale_checkout")
        assert len(shop.verifier.orders()) == 1


async def test_a_mandate_for_a_changed_cart_or_another_device_is_refused(embedded: EmbeddedRestartable) -> None:
    async with ShopBackend(embedded.url) as shop, keyed(shop, embedded) as device:
        offer = await device.ask("buy two packs of AA batteries")
        honest = unverified_claims(device.sign(offer, Modality.VOICE) or "")
        assert honest is not None
        cheaper = MandateClaims.model_validate({**honest, "amount_minor": 100, "checkout_hash": "0" * 64})
        assert device.key is not None
        result = await device.answer(offer, Decision.CONFIRM, mandate=sign_mandate(device.key, cheaper))
        assert result.outcome is Outcome.NOT_CONFIRMED and (result.reason or "").startswith("hash_mismatch")
        offer = await device.ask("buy two packs of AA batteries")
        stranger = SigningKey.generate()
        shop.enroll("speaker-2", stranger)
        claims = MandateClaims.model_validate(unverified_claims(device.sign(offer, Modality.VOICE) or ""))
        result = await device.answer(offer, Decision.CONFIRM, mandate=sign_mandate(stranger, claims))
        assert result.outcome is Outcome.NOT_CONFIRMED and (result.reason or "").startswith("unknown_key")
        assert shop.verifier.orders() == []


async def test_step_up_over_the_voice_cap_and_blocked_categories(embedded: EmbeddedRestartable) -> None:
    async with ShopBackend(embedded.url) as shop, keyed(shop, embedded) as device:
        offer = await device.ask("buy two yoga mats and a pair of running shoes")
        assert Modality.VOICE not in offer.request.consent.modalities
        by_voice = await device.answer(offer, Decision.CONFIRM, modality=Modality.VOICE)
        assert by_voice.outcome is Outcome.STEP_UP_REQUIRED
        offer = await device.ask("buy two yoga mats and a pair of running shoes")
        shop.verifier.step_up.set_pin("speaker-1", "2468")  # at provisioning; the platform checks it
        proof = await device.step_up(offer, "2468")
        by_pin = await device.answer(offer, Decision.CONFIRM, modality=Modality.VOICE_PIN,
                                     mandate=device.sign(offer, Modality.VOICE_PIN, step_up=proof))  # fmt: skip
        assert by_pin.outcome is Outcome.ORDERED
        with pytest.raises(RemoteError) as caught:
            await device.ask("buy a bottle of red wine")
        assert caught.value.code == ErrorCode.CATEGORY_BLOCKED
        assert len(shop.verifier.orders()) == 1
        kinds = [r["kind"] for r in trail(shop.db.path, offer.session_id)]
        assert kinds == ["proposal", "terms", "rendering", "step_up", "confirmation", "verification", "order", "result"]
