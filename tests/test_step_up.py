"""Issue 18, finding 2: step-up is checked, not declared. A modality is bound to what the signing
device was provisioned as, and a `voice_pin` confirmation needs the platform's single-use proof of a
PIN it checked itself against a salted scrypt hash, with a lockout after too many wrong ones.
Real Ed25519 signatures, a real SQLite store, a real broker for the bus paths."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import sign_mandate
from device_sdk.consent.readback import compose_lens_card, compose_phone_sheet, display_digest
from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.audit import AuditLog, trail
from device_sdk.platform.checkout.backend import Completion
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.registry import DeviceRegistry
from device_sdk.platform.checkout.step_up import LOCKOUT, MAX_TRIES, pin_matches
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.platform.provisioning.provision import provision, read_pin
from device_sdk.protocol.errors import CheckoutError, ConfigError, ConsentError, ErrorCode, RemoteError
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, Outcome
from device_sdk.protocol.messages import CheckoutProposal, ConfirmationRequest, ConfirmationResult
from device_sdk.voice.digits import parse_pin
from simulators.scenario import ShopBackend, run_demo
from tests.conftest import EmbeddedRestartable
from tests.consent_kit import AUDIENCE, Shop, make_proposal

PIN = "90817263"
OVER_THE_CAP = (("yoga-mat", 2), ("shoes-running-42", 1))


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def shop(store: str | Path, clock: Clock) -> Iterator[Shop]:
    """A verifier (on a clock the test moves) with a speaker that has a PIN, glasses and a phone; on
    SQLite and on PostgreSQL."""
    with Database(store) as db:
        verifier = ConsentVerifier(db, AuditLog.open(db), audience=AUDIENCE, clock=clock)
        shop = Shop(db, verifier)
        shop.enroll("speaker-1", pin=PIN)
        shop.enroll("speaker-2")
        shop.enroll("glasses-1", DeviceKind.GLASSES)
        shop.enroll("phone-1", DeviceKind.PHONE)
        yield shop


def over_the_cap(shop: Shop, device_id: str = "speaker-1") -> ConfirmationRequest:
    offer = shop.offer(make_proposal(device_id, OVER_THE_CAP))
    assert offer.proposal.total_minor > 50_000 and Modality.VOICE not in offer.consent.modalities
    return offer


def refused(shop: Shop, completion: Completion, code: ErrorCode) -> ConsentError:
    with pytest.raises(ConsentError) as caught:
        shop.complete(completion)
    assert caught.value.code == code, caught.value
    return caught.value


def confirm(shop: Shop, offer: ConfirmationRequest, modality: Modality, presented: str) -> Completion:
    """The owner's confirmation by `modality` of what it `presented` (a card, a sheet), signed by its key."""
    digest = display_digest(presented)
    token = sign_mandate(
        shop.keys[offer.proposal.device_id], shop.claims(offer, modality=modality, display_digest=digest)
    )
    answer = ConfirmationResult(
        session_id=offer.session_id, checkout_id=offer.checkout_id, checkout_hash=offer.checkout_hash,
        decision=Decision.CONFIRM, modality=modality, display_digest=digest, mandate=token,
    )  # fmt: skip
    return Completion(offer.checkout_id, offer.checkout_hash, offer.proposal.device_id, offer.session_id, answer)


def test_finding_2_a_voice_pin_with_no_or_a_wrong_pin_orders_nothing(shop: Shop) -> None:
    offer = over_the_cap(shop)
    # the device only says "voice_pin": nobody checked a PIN, no order (main ordered 657 CNY here)
    error = refused(shop, shop.confirm(offer, modality=Modality.VOICE_PIN), ErrorCode.STEP_UP_REQUIRED)
    assert error.outcome == Outcome.STEP_UP_REQUIRED
    # a proof the platform never issued
    forged = shop.confirm(offer, modality=Modality.VOICE_PIN, step_up=secrets.token_urlsafe(32))
    refused(shop, forged, ErrorCode.STEP_UP_REQUIRED)
    # a wrong PIN gives no proof at all
    with pytest.raises(ConsentError) as caught:
        shop.verifier.step_up.prove("speaker-1", offer.checkout_id, offer.checkout_hash, "11112222")
    assert caught.value.code == ErrorCode.STEP_UP_FAILED and f"{MAX_TRIES - 1} tries left" in caught.value.text
    assert shop.verifier.orders() == [] and shop.charges == []
    refusals = shop.refusals(offer.session_id)
    assert refusals == ["step_up_required", "step_up_required"]
    tries = [r for r in trail(shop.db.url, offer.session_id) if r["kind"] == "step_up"]
    assert [(r["outcome"], r["tries_left"]) for r in tries] == [("wrong_pin", MAX_TRIES - 1)]


def test_finding_2_the_right_pin_orders_once(shop: Shop) -> None:
    offer = over_the_cap(shop)
    grant = shop.verifier.step_up.prove("speaker-1", offer.checkout_id, offer.checkout_hash, PIN)

    def decline(proposal: CheckoutProposal, key: str) -> str:
        raise CheckoutError("card declined", ErrorCode.PAYMENT_DECLINED)

    declined = shop.confirm(offer, modality=Modality.VOICE_PIN, step_up=grant.proof)
    with pytest.raises(ConsentError) as caught:
        shop.verifier.complete(declined, decline)
    assert caught.value.code == ErrorCode.PAYMENT_DECLINED
    spent = shop.confirm(offer, modality=Modality.VOICE_PIN, step_up=grant.proof)  # single use: spent above
    assert "used already" in refused(shop, spent, ErrorCode.STEP_UP_REQUIRED).text
    grant = shop.verifier.step_up.prove("speaker-1", offer.checkout_id, offer.checkout_hash, PIN)
    order = shop.complete(shop.confirm(offer, modality=Modality.VOICE_PIN, step_up=grant.proof))
    assert order.outcome is Outcome.ORDERED
    again = shop.confirm(offer, modality=Modality.VOICE_PIN, step_up=grant.proof)  # a new mandate, the same proof
    refused(shop, again, ErrorCode.NONCE_USED)
    assert len(shop.verifier.orders()) == 1 and len(shop.charges) == 1
    assert shop.verifier.last is not None and shop.verifier.last.modality == "voice_pin"


def test_finding_2_lens_tap_from_a_speaker_is_refused(shop: Shop) -> None:
    offer = shop.offer()  # within the voice cap: only the modality is wrong
    card = compose_lens_card(offer.proposal)
    error = refused(shop, confirm(shop, offer, Modality.LENS_TAP, card), ErrorCode.MODALITY_NOT_SUPPORTED)
    assert "a speaker" in error.text and shop.verifier.orders() == []
    glasses = shop.offer(make_proposal("glasses-1"))  # the same tap from glasses orders
    tap = confirm(shop, glasses, Modality.LENS_TAP, compose_lens_card(glasses.proposal))
    assert shop.complete(tap).outcome is Outcome.ORDERED and len(shop.verifier.orders()) == 1


def test_finding_2_a_phone_sheet_only_from_a_phone(shop: Shop) -> None:
    for device_id in ("speaker-2", "glasses-1"):
        offer = over_the_cap(shop, device_id)
        completion = confirm(shop, offer, Modality.PHONE_SHEET, compose_phone_sheet(offer.proposal))
        error = refused(shop, completion, ErrorCode.MODALITY_NOT_SUPPORTED)
        assert f"cannot confirm by {Modality.PHONE_SHEET}" in error.text
    assert shop.verifier.orders() == []
    offer = over_the_cap(shop, "phone-1")
    completion = confirm(shop, offer, Modality.PHONE_SHEET, compose_phone_sheet(offer.proposal))
    assert shop.complete(completion).outcome is Outcome.ORDERED and len(shop.verifier.orders()) == 1


def test_finding_2_a_device_with_no_provisioned_kind_confirms_nothing(shop: Shop) -> None:
    key = shop.keys["speaker-9"] = SigningKey.generate()
    shop.verifier.registry.rotate("speaker-9", key.public)  # a registered key, but no kind recorded
    error = refused(shop, shop.confirm(shop.offer(make_proposal("speaker-9"))), ErrorCode.MODALITY_NOT_SUPPORTED)
    assert "no provisioned kind" in error.text and shop.verifier.orders() == []


def test_finding_2_lockout_after_too_many_wrong_pins(shop: Shop, clock: Clock) -> None:
    offer = over_the_cap(shop)
    prove = shop.verifier.step_up.prove
    codes = []
    for _ in range(MAX_TRIES):
        with pytest.raises(ConsentError) as caught:
            prove("speaker-1", offer.checkout_id, offer.checkout_hash, "00000000")
        codes.append(caught.value.code)
    assert codes == [ErrorCode.STEP_UP_FAILED] * (MAX_TRIES - 1) + [ErrorCode.STEP_UP_LOCKED]
    with pytest.raises(ConsentError) as caught:  # now even the right PIN is refused, unchecked
        prove("speaker-1", offer.checkout_id, offer.checkout_hash, PIN)
    assert caught.value.code == ErrorCode.STEP_UP_LOCKED
    records = trail(shop.db.url, offer.session_id)
    locked = [r for r in records if r["kind"] == "step_up" and r["outcome"] == "locked"]
    assert len(locked) == 1 and locked[0]["locked_until"] == clock.now + LOCKOUT
    assert [r["code"] for r in records if r["kind"] == "refusal"] == ["step_up_locked"]
    assert PIN not in json.dumps(records) and "00000000" not in json.dumps(records)
    clock.now += LOCKOUT + 1  # the lockout is over: the right PIN works again
    grant = prove("speaker-1", offer.checkout_id, offer.checkout_hash, PIN)
    now = int(clock.now)
    fresh = shop.confirm(offer, modality=Modality.VOICE_PIN, step_up=grant.proof, iat=now, exp=now + 300)
    assert shop.complete(fresh).outcome is Outcome.ORDERED


def test_finding_2_the_pin_is_kept_as_a_salted_slow_hash(shop: Shop) -> None:
    shop.verifier.step_up.set_pin("speaker-2", PIN)  # the same PIN on two devices
    with shop.db.reading() as conn:
        stored = dict(conn.execute("SELECT device_id, pin_hash FROM device_pins").fetchall())
    one, two = stored["speaker-1"], stored["speaker-2"]
    assert one != two  # salted: the same PIN, two hashes
    assert one.startswith("scrypt$32768$8$1$") and PIN not in one and PIN not in two
    assert pin_matches(PIN, one) and pin_matches(PIN, two) and not pin_matches("90817264", one)
    if shop.db.dialect == "sqlite":
        files = b"".join(p.read_bytes() for p in shop.db.path.parent.iterdir() if p.is_file())
    else:  # PostgreSQL: not in the audit log, nor in any text of the PIN table
        with shop.db.reading() as conn:
            files = repr([*conn.execute("SELECT body FROM audit").fetchall(), *stored.values()]).encode()
    assert PIN.encode() not in files  # nowhere on disk, not in the audit log either
    with pytest.raises(ConfigError):
        shop.verifier.step_up.set_pin("speaker-2", "12ab")


def test_finding_2_a_proof_cannot_be_replayed_for_another_checkout(shop: Shop) -> None:
    first = over_the_cap(shop)
    grant = shop.verifier.step_up.prove("speaker-1", first.checkout_id, first.checkout_hash, PIN)
    second = over_the_cap(shop)
    refused(shop, shop.confirm(second, modality=Modality.VOICE_PIN, step_up=grant.proof), ErrorCode.STEP_UP_REQUIRED)
    other = over_the_cap(shop, "speaker-2")  # nor by another device for its own checkout
    refused(shop, shop.confirm(other, modality=Modality.VOICE_PIN, step_up=grant.proof), ErrorCode.STEP_UP_REQUIRED)
    assert shop.verifier.orders() == []
    # the refusals above spent nothing: the proof still orders the checkout it was issued for
    assert shop.complete(shop.confirm(first, modality=Modality.VOICE_PIN, step_up=grant.proof)).order_id
    with pytest.raises(ConsentError) as caught:  # and a proof is for the device that asked, not another's
        shop.verifier.step_up.prove("speaker-2", second.checkout_id, second.checkout_hash, PIN)
    assert caught.value.code == ErrorCode.UNKNOWN_CHECKOUT


async def test_finding_2_the_pin_goes_over_the_bus_and_the_gateway_has_it_checked(
    embedded: EmbeddedRestartable,
) -> None:
    async with ShopBackend(embedded.url) as shop:
        key = shop.provision("speaker-1", pin=PIN)
        async with DeviceClient(embedded.url, "speaker-1", key=key) as device:
            offer = await device.ask("buy two yoga mats and a pair of running shoes")
            unproved = await device.answer(offer, Decision.CONFIRM, modality=Modality.VOICE_PIN)
            assert unproved.outcome is Outcome.STEP_UP_REQUIRED
            offer = await device.ask("buy two yoga mats and a pair of running shoes")
            with pytest.raises(RemoteError) as caught:
                await device.step_up(offer, "12345678")
            assert caught.value.code == ErrorCode.STEP_UP_FAILED
            proof = await device.step_up(offer, PIN)
            mandate = device.sign(offer, Modality.VOICE_PIN, step_up=proof)
            result = await device.answer(offer, Decision.CONFIRM, modality=Modality.VOICE_PIN, mandate=mandate)
        assert result.outcome is Outcome.ORDERED and len(shop.checkout.orders) == 1
        tries = [r["outcome"] for r in trail(shop.db.url, offer.session_id) if r["kind"] == "step_up"]
        assert tries == ["wrong_pin", "proved"]


async def test_finding_2_the_simulated_user_says_the_pin_it_was_provisioned_with() -> None:
    ordered = await run_demo("buy two yoga mats and a pair of running shoes", pin=PIN)
    assert ordered.ordered and ordered.verification is not None and ordered.verification.modality == "voice_pin"
    assert "(PIN)" in ordered.run.heard and PIN not in json.dumps(ordered.as_dict(), default=str)
    without = await run_demo("buy two yoga mats and a pair of running shoes")
    assert without.outcome is Outcome.STEP_UP_REQUIRED and without.orders_placed == 0


def test_finding_2_provisioning_takes_the_kind_and_a_pin_from_a_file(tmp_path: Path) -> None:
    where = {"directory": tmp_path / "broker", "database": tmp_path / "shop.db"}
    pin_file = tmp_path / "pin"
    pin_file.write_text(PIN + "\n")
    done = provision("glasses-7", key_out=tmp_path / "g.key", kind="glasses", pin=read_pin(pin_file), **where)  # type: ignore[arg-type]
    shown = json.dumps(done.as_dict())
    assert done.pin_set and done.as_dict()["kind"] == "glasses" and PIN not in shown
    assert PIN not in done.credentials_file.read_text()
    rotated = provision("glasses-7", key_out=tmp_path / "g.key", rotate=True, **where)  # type: ignore[arg-type]
    assert rotated.profile is not None and rotated.profile.kind is DeviceKind.GLASSES  # kept, not reset
    with pytest.raises(ConfigError):
        provision("speaker-8", key_out=tmp_path / "s.key", pin="12", **where)  # type: ignore[arg-type]
    with Database(where["database"]) as db:
        assert DeviceRegistry(db).profile("speaker-8") is None  # a bad PIN changed nothing
        stored = db.call(lambda conn: conn.execute("SELECT pin_hash FROM device_pins").fetchall())
    assert len(stored) == 1 and pin_matches(PIN, stored[0][0])


@pytest.mark.parametrize(
    ("heard", "digits"),
    [
        ("one two three four", "1234"),
        ("five one four oh three two six nine", "51403269"),  # "oh" is 0
        ("zero zero seven nine", "0079"),
        ("my pin is four double six nine", "4669"),
        ("triple five eight", "5558"),
        ("1 2 3 4", "1234"),  # as a free recogniser writes digits
        ("4, 1, 3, 5.", "4135"),
        ("12-34-56", "123456"),
        ("one to three for", "1234"),  # homophones, where every word is a digit or a filler
        ("Nine. Oh. Eight. One.", "9081"),
        ("\uff11\uff12\uff13\uff14", "1234"),  # full-width
    ],
)
def test_finding_2_spoken_digits_in_english(heard: str, digits: str) -> None:
    assert parse_pin(heard, "en") == digits


@pytest.mark.parametrize(
    ("heard", "digits"),
    [
        ("一二三四", "1234"),
        ("幺两三四", "1234"),  # 幺 for 1, 两 for 2, as digits are read out
        ("九〇八一七二六三", "90817263"),
        ("零零七九", "0079"),
        ("五 一 四 零 三 二 六 九", "51403269"),
        ("我的密码是一二三四。", "1234"),
        ("1234", "1234"),
        ("\uff11\uff12\uff13\uff14", "1234"),  # full-width
        ("七拐八勾", "7789"),
    ],
)
def test_finding_2_spoken_digits_in_chinese(heard: str, digits: str) -> None:
    assert parse_pin(heard, "zh") == digits


@pytest.mark.parametrize(
    ("heard", "language"),
    [
        ("i want to buy four", "en"),  # words that are no digit: not a PIN, nothing is sent
        ("cancel", "en"),
        ("one two three", "en"),  # too short
        ("one two three four five six seven eight nine one two three four", "en"),  # 13: too long
        ("[unk]", "en"),
        ("", "en"),
        ("double", "en"),
        ("one thousand two hundred", "en"),
        ("买一二三四", "zh"),
        ("一千二百三十四", "zh"),  # a number, not digits
        ("取消", "zh"),
        ("一二三", "zh"),
    ],
)
def test_finding_2_what_is_no_pin_is_not_sent(heard: str, language: str) -> None:
    assert parse_pin(heard, language) is None
    assert parse_pin(None, language) is None  # type: ignore[arg-type]
