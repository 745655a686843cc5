"""The adversarial suite: every way to get an order without a valid, single-use, device-signed
consent for exactly the cart offered is refused with its reason code and an audit record, and
places no order. The verifier runs on a real SQLite file with real Ed25519 signatures."""

from __future__ import annotations

import base64
import json
import multiprocessing
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import sign_mandate
from device_sdk.platform.checkout.audit import trail
from device_sdk.platform.checkout.outcomes import completion_key
from device_sdk.platform.checkout.policy import PolicyBook
from device_sdk.protocol.errors import ConsentError, ErrorCode, StoreError
from device_sdk.protocol.fields import Modality, Outcome
from tests.consent_kit import Shop, make_proposal, open_shop


@pytest.fixture
def shop(store: str | Path) -> Iterator[Shop]:
    yield from open_shop(store)


def refused(shop: Shop, completion: Any, code: ErrorCode) -> ConsentError:
    """`completion` is refused with `code`, recorded as a refusal, and places no order."""
    orders = len(shop.verifier.orders())
    with pytest.raises(ConsentError) as caught:
        shop.complete(completion)
    assert caught.value.code == code, caught.value
    assert len(shop.verifier.orders()) == orders
    assert code.value in shop.refusals(completion.session_id)
    return caught.value


def test_a_valid_mandate_orders_once_and_is_audited(shop: Shop) -> None:
    offer = shop.offer()
    order = shop.complete(shop.confirm(offer))
    assert order.outcome is Outcome.ORDERED and order.total_minor == offer.proposal.total_minor
    assert [row[1] for row in shop.verifier.orders()] == [offer.checkout_id]
    assert shop.verifier.last is not None and shop.verifier.last.order == order
    assert shop.refusals(offer.session_id) == []


def test_a_replayed_mandate_is_refused(shop: Shop) -> None:
    offer = shop.offer()
    first = shop.confirm(offer)
    shop.complete(first)
    again = shop.completion(offer, first.confirmation.mandate)  # the same token, a new idempotency key
    refused(shop, again, ErrorCode.MANDATE_REPLAYED)
    another = shop.confirm(offer)  # a second mandate for the ordered checkout: its nonce is spent
    refused(shop, another, ErrorCode.NONCE_USED)
    assert len(shop.verifier.orders()) == 1


def test_a_mandate_for_another_checkout_is_refused(shop: Shop) -> None:
    mine, other = shop.offer(), shop.offer()
    token = shop.confirm(mine).confirmation.mandate
    refused(shop, shop.completion(other, token), ErrorCode.STALE_CHECKOUT)


@pytest.mark.parametrize(
    "change",
    [
        {"qty": 3},  # a quantity changed after confirmation
        {"unit_price_minor": 990},  # a price changed
        {"sku": "eggs-12"},  # another product
    ],
)
def test_a_cart_changed_after_confirmation_is_refused(shop: Shop, change: dict[str, Any]) -> None:
    offer = shop.offer()
    line = offer.proposal.lines[0].model_copy(update=change)
    line = line.model_copy(update={"line_total_minor": line.qty * line.unit_price_minor})
    changed = offer.proposal.model_copy(
        update={"lines": [line, *offer.proposal.lines[1:]],
                "total_minor": line.line_total_minor + sum(x.line_total_minor for x in offer.proposal.lines[1:])}
    )  # fmt: skip
    import hashlib

    changed_hash = hashlib.sha256(changed.encode()).hexdigest()
    completion = shop.confirm(offer, checkout_hash=changed_hash, amount_minor=changed.total_minor)
    refused(shop, completion, ErrorCode.HASH_MISMATCH)


@pytest.mark.parametrize(
    ("times", "code"),
    [
        ((-400, -100), ErrorCode.MANDATE_EXPIRED),  # expired
        ((-10, 1000), ErrorCode.MANDATE_EXPIRED),  # lives longer than 15 minutes
        ((-10, 400), ErrorCode.MANDATE_EXPIRED),  # longer than the terms allow (300 s)
        ((600, 800), ErrorCode.MANDATE_EXPIRED),  # issued in the future
    ],
)
def test_expiry_is_checked(shop: Shop, times: tuple[int, int], code: ErrorCode) -> None:
    now = int(time.time())
    refused(shop, shop.confirm(shop.offer(), iat=now + times[0], exp=now + times[1]), code)


def test_a_mandate_never_lives_past_fifteen_minutes_from_now(shop: Shop) -> None:
    now = int(time.time())
    offer = shop.offer(lifetime=900)
    refused(shop, shop.confirm(offer, iat=now + 60, exp=now + 960), ErrorCode.MANDATE_EXPIRED)
    assert shop.complete(shop.confirm(offer, iat=now, exp=now + 900)).order_id


def test_wrong_audience_is_refused(shop: Shop) -> None:
    refused(shop, shop.confirm(shop.offer(), aud="another-checkout"), ErrorCode.WRONG_AUDIENCE)


def test_an_unknown_nonce_is_refused(shop: Shop) -> None:
    first, second = shop.offer(), shop.offer()
    refused(shop, shop.confirm(first, nonce="n" * 32), ErrorCode.NONCE_UNKNOWN)
    refused(shop, shop.confirm(first, nonce=second.consent.nonce), ErrorCode.NONCE_UNKNOWN)  # another's nonce


def test_another_devices_key_or_an_unknown_key_is_refused(shop: Shop) -> None:
    offer = shop.offer()
    refused(shop, shop.confirm(offer, signer="speaker-2"), ErrorCode.UNKNOWN_KEY)
    stranger = SigningKey.generate()
    token = sign_mandate(stranger, shop.claims(offer))
    refused(shop, shop.completion(offer, token), ErrorCode.UNKNOWN_KEY)
    # speaker-2 signing its own claims for speaker-1's session, sent from its own topic
    token = sign_mandate(shop.keys["speaker-2"], shop.claims(offer, device_id="speaker-2"))
    refused(shop, shop.completion(offer, token, device_id="speaker-2"), ErrorCode.UNKNOWN_KEY)


def test_a_forged_signature_is_refused(shop: Shop) -> None:
    offer = shop.offer()
    forger = SigningKey.generate()
    honest = sign_mandate(shop.keys["speaker-1"], shop.claims(offer))
    forged_sig = sign_mandate(forger, shop.claims(offer)).split(".")[2]
    header, payload, _ = honest.split(".")
    refused(shop, shop.completion(offer, f"{header}.{payload}.{forged_sig}"), ErrorCode.BAD_SIGNATURE)


def test_an_altered_payload_or_a_truncated_token_is_refused(shop: Shop) -> None:
    offer = shop.offer()
    token = shop.confirm(offer).confirmation.mandate
    assert token is not None
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["amount_minor"] = 1
    altered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused(shop, shop.completion(offer, f"{header}.{altered}.{signature}"), ErrorCode.BAD_SIGNATURE)
    refused(shop, shop.completion(offer, token[:-10]), ErrorCode.BAD_SIGNATURE)
    refused(shop, shop.completion(offer, f"{header}.{payload}"), ErrorCode.MANDATE_MALFORMED)
    none_alg = base64.urlsafe_b64encode(b'{"alg":"none","kid":"x","typ":"shop-consent+jws"}').rstrip(b"=").decode()
    refused(shop, shop.completion(offer, f"{none_alg}.{payload}.{signature}"), ErrorCode.MANDATE_MALFORMED)
    refused(shop, shop.completion(offer, None), ErrorCode.MANDATE_MISSING)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        (b'["alg","kid","typ"]', b"{}"),  # a header that is a list with the right names
        (b"5", b"{}"),
        (None, b'{"jti": NaN, "amount_minor": 1e999}'),  # numbers JSON does not have
        (None, b"[" * 2500 + b"]" * 2500),  # nesting deeper than a parser's stack
        (None, b'{"jti": {"x": 1}, "jti": "dup"}'),
    ],
)
def test_malformed_mandates_get_a_coded_refusal_that_is_audited(
    shop: Shop, header: bytes | None, payload: bytes
) -> None:
    offer = shop.offer()
    kid = shop.keys["speaker-1"].public.kid
    head = header or json.dumps({"alg": "Ed25519", "kid": kid, "typ": "shop-consent+jws"}).encode()
    signing_input = f"{b64(head)}.{b64(payload)}"
    token = f"{signing_input}.{b64(shop.keys['speaker-1'].sign(signing_input.encode()))}"
    with pytest.raises(ConsentError) as caught:
        shop.complete(shop.completion(offer, token))
    assert caught.value.code in (ErrorCode.MANDATE_MALFORMED, ErrorCode.BAD_SIGNATURE)
    assert caught.value.code.value in shop.refusals(offer.session_id)
    assert shop.verifier.orders() == []


def test_a_commit_that_fails_after_the_charge_is_retried_into_the_same_order(shop: Shop) -> None:
    offer = shop.offer()
    completion = shop.confirm(offer)
    failing = [True]

    def disk_full(conn: Any) -> None:
        if shop.charges and failing and failing.pop():  # the result's transaction, after the charge
            raise OSError("disk full")

    shop.db.after_batch(disk_full)
    with pytest.raises(StoreError):
        shop.complete(completion)  # charged, then the result could not commit: the completion is pending
    assert shop.verifier.orders() == []
    order = shop.complete(completion)  # the gateway's retry: same idempotency key
    key = completion_key(offer.checkout_id, completion.idempotency_key)
    assert order.order_id == f"ord_{key}"
    assert shop.charges == [key, key]  # the same payment key both times
    assert [row[0] for row in shop.verifier.orders()] == [order.order_id]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_mutation_of_a_token_orders(shop: Shop, data: st.DataObject) -> None:
    offer = shop.offer()
    token = shop.confirm(offer).confirmation.mandate
    assert token is not None
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.text(alphabet="ABCabc019-_.=/+ \u00e9", min_size=0, max_size=3))
    mutated = token[:position] + replacement + token[position + 1 :]
    if mutated == token:
        return
    with pytest.raises(ConsentError) as caught:
        shop.complete(shop.completion(offer, mutated))
    assert caught.value.code in (ErrorCode.BAD_SIGNATURE, ErrorCode.MANDATE_MALFORMED, ErrorCode.UNKNOWN_KEY)
    assert shop.verifier.orders() == []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_garbage_mandates_get_a_coded_refusal(shop: Shop, garbage: str) -> None:
    offer = shop.offer()
    with pytest.raises(ConsentError) as caught:
        shop.complete(shop.completion(offer, garbage or None))
    assert caught.value.code in (ErrorCode.MANDATE_MALFORMED, ErrorCode.MANDATE_MISSING)
    assert shop.verifier.orders() == []


def test_amount_currency_and_payee_must_be_the_proposals(shop: Shop) -> None:
    offer = shop.offer()
    refused(shop, shop.confirm(offer, amount_minor=1), ErrorCode.AMOUNT_MISMATCH)
    refused(shop, shop.confirm(offer, currency="USD"), ErrorCode.AMOUNT_MISMATCH)
    refused(shop, shop.confirm(offer, payee="m-drinks"), ErrorCode.PAYEE_MISMATCH)


def test_a_display_digest_that_does_not_match_is_refused(shop: Shop) -> None:
    offer = shop.offer()
    refused(shop, shop.confirm(offer, display_digest="0" * 64), ErrorCode.DISPLAY_MISMATCH)


@pytest.mark.parametrize("handler", ["4111-1111-1111-1111", "4111111111111111", "other-wallet"])
def test_a_payment_channel_off_the_allow_list_is_refused(shop: Shop, handler: str) -> None:
    error = refused(shop, shop.confirm(shop.offer(), payment_handler=handler), ErrorCode.PAYMENT_CHANNEL_NOT_ALLOWED)
    assert error.outcome == Outcome.BLOCKED


def test_over_the_voice_cap_needs_a_stronger_confirmation(shop: Shop) -> None:
    offer = shop.offer(make_proposal(items=(("yoga-mat", 2), ("shoes-running-42", 1))))
    assert offer.proposal.total_minor > 50_000
    assert Modality.VOICE not in offer.consent.modalities and Modality.VOICE_PIN in offer.consent.modalities
    error = refused(shop, shop.confirm(offer), ErrorCode.STEP_UP_REQUIRED)
    assert error.outcome == Outcome.STEP_UP_REQUIRED
    shop.verifier.step_up.set_pin("speaker-1", "2468")  # a voice_pin needs the platform's proof of the PIN
    proof = shop.verifier.step_up.prove("speaker-1", offer.checkout_id, offer.checkout_hash, "2468").proof
    order = shop.complete(shop.confirm(offer, modality=Modality.VOICE_PIN, step_up=proof))
    assert order.outcome is Outcome.ORDERED


def test_a_blocked_category_is_refused_at_open_and_audited(shop: Shop) -> None:
    issued = make_proposal(items=(("wine-red-750", 1),))
    with pytest.raises(ConsentError) as caught:
        shop.verifier.open(issued)
    assert caught.value.code == ErrorCode.CATEGORY_BLOCKED and caught.value.outcome == Outcome.BLOCKED
    assert shop.refusals(issued.proposal.session_id) == ["category_blocked"]
    assert shop.verifier.orders() == []


def test_daily_cap_and_velocity_are_per_device_at_open_and_at_completion(store: str | Path) -> None:
    policy = PolicyBook.parse(
        "daily_cap_minor = {CNY = 2000}\n[devices.speaker-2]\norders_per_minute = 1\ndaily_cap_minor = {CNY = 9000}"
    )
    milk = (("milk-1l", 1),)  # 12.50 CNY
    for shop in open_shop(store, policy):
        first, second = shop.offer(make_proposal(items=milk)), shop.offer(make_proposal(items=milk))
        assert shop.complete(shop.confirm(first)).order_id
        refused(shop, shop.confirm(second), ErrorCode.DAILY_CAP)  # 25.00 CNY in a day: over the cap
        with pytest.raises(ConsentError) as caught:
            shop.offer(make_proposal(items=milk))  # a new proposal is refused before it is offered
        assert caught.value.code == ErrorCode.DAILY_CAP and caught.value.outcome == Outcome.BLOCKED
        one, two = shop.offer(make_proposal("speaker-2", milk)), shop.offer(make_proposal("speaker-2", milk))
        assert shop.complete(shop.confirm(one)).order_id  # another device has a cap of its own
        refused(shop, shop.confirm(two), ErrorCode.VELOCITY_LIMIT)
        with pytest.raises(ConsentError) as caught:
            shop.offer(make_proposal("speaker-2", milk))
        assert caught.value.code == ErrorCode.VELOCITY_LIMIT


def test_a_cancelled_checkout_cannot_be_completed(shop: Shop) -> None:
    shop.complete(shop.confirm(shop.offer()))  # another checkout was ordered before
    offer = shop.offer()
    shop.verifier.cancel(offer.checkout_id, Outcome.DECLINED, "the user declined")
    refused(shop, shop.confirm(offer), ErrorCode.CHECKOUT_CLOSED)
    assert "cancel" in [r["kind"] for r in trail(shop.db.url, offer.session_id)]


def test_the_unsigned_confirmation_must_say_what_the_mandate_says(shop: Shop) -> None:
    offer = shop.offer()
    completion = shop.confirm(offer)
    lens = completion.confirmation.model_copy(update={"modality": Modality.LENS_TAP})
    refused(shop, shop.completion(offer, lens.mandate, modality=Modality.LENS_TAP), ErrorCode.MODALITY_MISMATCH)


def test_revoked_and_rotated_keys(shop: Shop) -> None:
    offer = shop.offer()
    old_key = shop.keys["speaker-1"]
    early = shop.confirm(offer)  # signed before the rotation
    shop.enroll("speaker-1")
    late = sign_mandate(old_key, shop.claims(offer, iat=int(time.time()) + 2))  # after the rotation
    refused(shop, shop.completion(offer, late), ErrorCode.KEY_REVOKED)
    assert shop.complete(early).outcome is Outcome.ORDERED
    shop.verifier.registry.revoke("speaker-1")
    refused(shop, shop.confirm(shop.offer()), ErrorCode.KEY_REVOKED)


def test_idempotency_same_key_same_result_other_body_conflict(shop: Shop) -> None:
    offer = shop.offer()
    completion = shop.confirm(offer)
    first = shop.complete(completion)
    assert shop.complete(completion) == first  # a retry with the same key: the same order, no second
    other = shop.completion(offer, shop.confirm(offer).confirmation.mandate, key=completion.idempotency_key)
    refused(shop, other, ErrorCode.IDEMPOTENCY_CONFLICT)
    short = shop.completion(shop.offer(), None, key="idem_short")
    refused(shop, short, ErrorCode.BAD_IDEMPOTENCY_KEY)
    assert len(shop.verifier.orders()) == 1


def test_a_refusal_is_the_answer_to_its_key_too(shop: Shop) -> None:
    offer = shop.offer()
    bad = shop.confirm(offer, aud="elsewhere")
    refused(shop, bad, ErrorCode.WRONG_AUDIENCE)
    with pytest.raises(ConsentError) as caught:
        shop.complete(bad)
    assert caught.value.code == ErrorCode.WRONG_AUDIENCE


def test_single_use_survives_a_restart(store: str | Path) -> None:
    shops = open_shop(store)
    shop = next(shops)
    offer = shop.offer()
    completion = shop.confirm(offer)
    order = shop.complete(completion)
    shops.close()
    for reopened in open_shop(store):
        reopened.keys.update(shop.keys)
        assert reopened.complete(completion) == order  # idempotent across the restart
        again = reopened.completion(offer, completion.confirmation.mandate)
        refused(reopened, again, ErrorCode.MANDATE_REPLAYED)
        assert len(reopened.verifier.orders()) == 1


def test_concurrent_submissions_from_threads_order_once(shop: Shop) -> None:
    offer = shop.offer()
    token = shop.confirm(offer).confirmation.mandate
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def submit() -> None:
        barrier.wait()
        try:
            outcomes.append(shop.complete(shop.completion(offer, token)).outcome)
        except ConsentError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes).count(Outcome.ORDERED) == 1
    assert set(outcomes) - {Outcome.ORDERED} == {ErrorCode.MANDATE_REPLAYED}
    assert len(shop.verifier.orders()) == 1


def _submit_in_process(path: str, completion: Any, start: Any, results: Any) -> None:
    from device_sdk.platform.checkout.audit import AuditLog
    from device_sdk.platform.checkout.database import Database
    from device_sdk.platform.checkout.verifier import ConsentVerifier
    from tests.consent_kit import AUDIENCE

    with Database(path) as db:
        verifier = ConsentVerifier(db, AuditLog.open(db), audience=AUDIENCE)
        start.wait()
        try:
            results.put(verifier.complete(completion, lambda proposal, key: f"ord_{key}").outcome.value)
        except ConsentError as exc:
            results.put(exc.code.value)


def test_concurrent_submissions_from_processes_order_once(shop: Shop) -> None:
    offer = shop.offer()
    token = shop.confirm(offer).confirmation.mandate
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    processes = [
        context.Process(target=_submit_in_process, args=(str(shop.db.url), shop.completion(offer, token), start,
                                                          results))
        for _ in range(4)
    ]  # fmt: skip
    for process in processes:
        process.start()
    time.sleep(1.0)
    start.set()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    outcomes = sorted(results.get(timeout=5) for _ in processes)
    assert outcomes.count("ordered") == 1
    assert set(outcomes) - {"ordered"} == {"mandate_replayed"}
    assert len(shop.verifier.orders()) == 1


def test_a_declined_payment_is_a_refusal_with_its_code(shop: Shop) -> None:
    from device_sdk.protocol.errors import CheckoutError

    def decline(proposal: Any, key: str) -> str:
        raise CheckoutError("insufficient funds")

    offer = shop.offer()
    with pytest.raises(ConsentError) as caught:
        shop.verifier.complete(shop.confirm(offer), decline)
    assert caught.value.code == ErrorCode.PAYMENT_DECLINED
    assert shop.refusals(offer.session_id) == ["payment_declined"]
    assert shop.verifier.orders() == []


async def test_a_device_never_sends_a_mandate_with_a_decline(shop: Shop) -> None:
    from device_sdk.device.client import DeviceClient
    from device_sdk.device.offer import Offer
    from device_sdk.protocol.errors import ProtocolError
    from device_sdk.protocol.fields import Decision

    device = DeviceClient("mqtt://127.0.0.1:1", "speaker-1", key=shop.keys["speaker-1"])
    offer = Offer(shop.offer())
    token = device.sign(offer, Modality.VOICE)
    assert token is not None
    with pytest.raises(ProtocolError):
        await device.answer(offer, Decision.DECLINE, mandate=token)
