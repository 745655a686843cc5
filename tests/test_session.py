"""The gateway's session state machine, with no I/O."""

from __future__ import annotations

import pytest

from device_sdk.consent.readback import compose_readback, display_digest
from device_sdk.platform.gateway.session import Session, State, Step
from device_sdk.protocol.errors import ErrorCode, SessionError
from device_sdk.protocol.fields import Decision, Modality, Outcome
from device_sdk.protocol.messages import (
    ConfirmationRequest,
    ConfirmationResult,
    ConsentTerms,
    IssuedProposal,
    OrderResult,
)
from tests.test_messages import proposal

TERMS = ConsentTerms(audience="test", nonce="n" * 22, payment_handler="shop-wallet", modalities=[Modality.VOICE])


def offered() -> tuple[Session, ConfirmationRequest]:
    session = Session("ses_1", "speaker-1")
    assert session.on_request("speaker-1", "req_1") is Step.ASK_AGENT
    p = proposal()
    issued = IssuedProposal(p, p.encode())
    text = compose_readback(p)
    offer = ConfirmationRequest(
        session_id="ses_1", request_id="req_1", checkout_id=p.checkout_id, checkout_hash=issued.checkout_hash,
        proposal=p, readback=text, display_digest=display_digest(text), consent=TERMS, expires_at=100.0,
    )  # fmt: skip
    assert session.on_offer("req_1", issued, offer)
    return session, offer


def answer(offer: ConfirmationRequest, decision: Decision = Decision.CONFIRM, **changes: str) -> ConfirmationResult:
    fields = dict(
        session_id=offer.session_id, checkout_id=offer.checkout_id, checkout_hash=offer.checkout_hash,
        decision=decision, modality=Modality.VOICE, display_digest=offer.display_digest,
    )  # fmt: skip
    fields.update(changes)
    return ConfirmationResult.model_validate(fields)


def test_confirm_completes_once_and_repeats_get_the_same_result() -> None:
    session, offer = offered()
    assert session.on_confirmation("speaker-1", answer(offer), now=50.0) is Step.COMPLETE
    assert session.on_confirmation("speaker-1", answer(offer), now=50.0) is Step.IGNORE  # still completing
    session.end(OrderResult(session_id="ses_1", checkout_id=offer.checkout_id, outcome=Outcome.ORDERED,
                            order_id="ord_1"))  # fmt: skip
    assert session.on_confirmation("speaker-1", answer(offer), now=51.0) is Step.RESEND_RESULT


def test_another_device_cannot_answer_and_changes_nothing() -> None:
    session, offer = offered()
    with pytest.raises(SessionError) as caught:
        session.on_confirmation("speaker-2", answer(offer, Decision.DECLINE), now=50.0)
    assert caught.value.code == ErrorCode.SESSION_NOT_OWNED
    assert session.state is State.AWAITING_CONFIRMATION
    with pytest.raises(SessionError):
        session.on_request("speaker-2", "req_9")


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"checkout_id": "co_other"}, ErrorCode.STALE_CHECKOUT),
        ({"checkout_hash": "0" * 64}, ErrorCode.HASH_MISMATCH),
        ({"display_digest": "1" * 64}, ErrorCode.DISPLAY_MISMATCH),
    ],
)
def test_an_answer_to_anything_but_the_offer_is_refused(changes: dict[str, str], code: ErrorCode) -> None:
    session, offer = offered()
    with pytest.raises(SessionError) as caught:
        session.on_confirmation("speaker-1", answer(offer, **changes), now=50.0)
    assert caught.value.code == code
    assert session.state is State.AWAITING_CONFIRMATION


def test_decline_and_late_confirm_cancel() -> None:
    session, offer = offered()
    assert session.on_confirmation("speaker-1", answer(offer, Decision.DECLINE), now=50.0) is Step.CANCEL
    late, late_offer = offered()
    assert late.expired(now=101.0)
    assert late.on_confirmation("speaker-1", answer(late_offer), now=101.0) is Step.CANCEL


def test_repeated_request_resends_the_offer_and_a_new_one_supersedes() -> None:
    session, _ = offered()
    assert session.on_request("speaker-1", "req_1") is Step.RESEND_OFFER
    assert session.on_request("speaker-1", "req_2") is Step.ASK_AGENT
    assert session.state is State.AWAITING_PROPOSAL
    p = proposal()
    assert not session.on_offer("req_1", IssuedProposal(p, p.encode()), session.offer)  # type: ignore[arg-type]


def test_ended_session_takes_no_new_request() -> None:
    session, _ = offered()
    session.end(OrderResult(session_id="ses_1", outcome=Outcome.DECLINED))
    with pytest.raises(SessionError) as caught:
        session.on_request("speaker-1", "req_2")
    assert caught.value.code == ErrorCode.SESSION_CLOSED


def test_an_unanswered_completion_is_retried_with_growing_pauses() -> None:
    session, offer = offered()
    assert session.on_confirmation("speaker-1", answer(offer), now=50.0) is Step.COMPLETE
    waits = []
    for _ in range(8):
        session.on_complete_failed()
        session.touched = touched = 1000.0  # an exact clock: monotonic() + w - monotonic() may round below w
        wait = next(w for w in (0.5 * i for i in range(1, 200)) if session.needs_retry(touched + w, 2.0))
        waits.append(wait)
        session.state = State.COMPLETING  # the retry
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    session.on_complete_failed()
    session.touched = 1000.0
    assert session.needs_retry(session.touched + 60.0, 2.0) and not session.needs_retry(session.touched + 59.0, 2.0)


def test_a_hand_over_lets_the_paired_phone_confirm_and_the_device_only_decline() -> None:
    session, offer = offered()
    with pytest.raises(SessionError) as caught:
        session.on_hand_over("speaker-2", offer.checkout_id)
    assert caught.value.code == ErrorCode.SESSION_NOT_OWNED
    with pytest.raises(SessionError):
        session.on_hand_over("speaker-1", "chk_other")
    assert session.on_hand_over("speaker-1", offer.checkout_id) is Step.HAND_OVER
    session.handed_to = "phone-1"
    assert session.on_hand_over("speaker-1", offer.checkout_id) is Step.RESEND_OFFER  # asked again
    with pytest.raises(SessionError) as caught:  # the device's own confirmation no longer counts
        session.on_confirmation("speaker-1", answer(offer), now=50.0)
    assert caught.value.code == ErrorCode.SESSION_NOT_OWNED and session.state is State.AWAITING_CONFIRMATION
    with pytest.raises(SessionError):  # nor another device's
        session.on_confirmation("phone-2", answer(offer), now=50.0)
    assert session.on_confirmation("phone-1", answer(offer), now=50.0) is Step.COMPLETE
    declining, offer2 = offered()
    declining.handed_to = "phone-1"
    assert declining.on_confirmation("speaker-1", answer(offer2, Decision.DECLINE), now=50.0) is Step.CANCEL


def test_a_new_offer_in_the_session_is_no_longer_handed_over() -> None:
    session, offer = offered()
    session.handed_to = "phone-1"
    assert session.on_request("speaker-1", "req_2") is Step.ASK_AGENT
    assert session.on_offer("req_2", IssuedProposal(offer.proposal, offer.proposal.encode()), offer)
    assert session.handed_to is None
