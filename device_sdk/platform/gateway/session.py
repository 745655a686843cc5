"""A device session on the gateway side, as a small state machine with no I/O.

One session belongs to the device that opened it. It waits for a proposal, then for that
device's confirmation of exactly that proposal (or, once the device handed the offer over, the
confirmation of the phone paired with it), then ends with one `OrderResult`. Repeated
messages get the same answer again. Nothing moves a session backwards, except a checkout
that did not answer: then the session waits for the device's confirmation once more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum

from device_sdk.consent.readback import presentation_digest
from device_sdk.platform.checkout.backend import new_idempotency_key
from device_sdk.protocol.errors import ErrorCode, SessionError
from device_sdk.protocol.fields import Decision
from device_sdk.protocol.messages import ConfirmationRequest, ConfirmationResult, IssuedProposal, OrderResult


class State(StrEnum):
    IDLE = "idle"
    AWAITING_PROPOSAL = "awaiting_proposal"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    COMPLETING = "completing"
    ENDED = "ended"


class Step(StrEnum):
    """What the gateway should do with a request or a confirmation."""

    ASK_AGENT = "ask_agent"
    RESEND_OFFER = "resend_offer"
    RESEND_RESULT = "resend_result"
    IGNORE = "ignore"
    COMPLETE = "complete"
    CANCEL = "cancel"
    HAND_OVER = "hand_over"


@dataclass
class Session:
    session_id: str
    device_id: str
    state: State = State.IDLE
    request_id: str | None = None
    issued: IssuedProposal | None = None
    offer: ConfirmationRequest | None = None
    result: OrderResult | None = None
    confirmed: ConfirmationResult | None = None
    idempotency_key: str = field(default_factory=new_idempotency_key)
    handed_to: str | None = None
    """The paired phone the device handed the offer to: from then on it confirms, not the device."""
    unanswered: int = 0
    """Completions of this session's confirmation that got no answer from the checkout."""
    touched: float = field(default_factory=time.monotonic)
    offered: set[str] = field(default_factory=set)
    """Every checkout offered in this session by this gateway."""

    def check_owner(self, device_id: str) -> None:
        if device_id != self.device_id:
            raise SessionError(f"session {self.session_id} belongs to another device", ErrorCode.SESSION_NOT_OWNED)

    def on_request(self, device_id: str, request_id: str) -> Step:
        """A new agent request in this session (a repeat of the last one is answered again)."""
        self.check_owner(device_id)
        if request_id == self.request_id:
            if self.state is State.AWAITING_CONFIRMATION:
                return Step.RESEND_OFFER
            if self.state is State.ENDED:
                return Step.RESEND_RESULT
            return Step.IGNORE
        if self.state in (State.COMPLETING, State.ENDED):
            raise SessionError(f"session {self.session_id} has ended; open a new one", ErrorCode.SESSION_CLOSED)
        self.request_id = request_id
        self.state = State.AWAITING_PROPOSAL
        self.touched = time.monotonic()
        return Step.ASK_AGENT

    def on_offer(self, request_id: str, issued: IssuedProposal, offer: ConfirmationRequest) -> bool:
        """The proposal for `request_id` arrived; False if a newer request superseded it."""
        if request_id != self.request_id or self.state is not State.AWAITING_PROPOSAL:
            return False
        self.issued, self.offer, self.state = issued, offer, State.AWAITING_CONFIRMATION
        self.offered.add(offer.checkout_id)
        self.handed_to = None
        return True

    def on_agent_failed(self, request_id: str) -> None:
        if request_id == self.request_id and self.state is State.AWAITING_PROPOSAL:
            self.state = State.IDLE
            self.touched = time.monotonic()

    def on_hand_over(self, device_id: str, checkout_id: str) -> Step:
        """The device asks to hand its offer to its paired phone (again: the same answer)."""
        self.check_owner(device_id)
        if self.state is not State.AWAITING_CONFIRMATION or self.offer is None or self.confirmed is not None:
            raise SessionError(f"session {self.session_id} has no offer awaiting an answer", ErrorCode.STALE_CHECKOUT)
        if checkout_id != self.offer.checkout_id:
            raise SessionError(f"checkout {checkout_id} is not the one on offer", ErrorCode.STALE_CHECKOUT)
        return Step.RESEND_OFFER if self.handed_to is not None else Step.HAND_OVER

    def on_confirmation(self, device_id: str, result: ConfirmationResult, now: float) -> Step:
        """The device answered; refuses anything but its own answer to the offer it was shown. Once
        handed over, only the phone confirms; the device may still decline."""
        if self.handed_to is None or device_id != self.handed_to:
            self.check_owner(device_id)
            if self.handed_to is not None and result.decision is Decision.CONFIRM:
                raise SessionError(
                    f"the offer was handed to {self.handed_to}: confirm it there", ErrorCode.SESSION_NOT_OWNED
                )
        if self.state is State.ENDED and self.result is not None and result.checkout_id == self.result.checkout_id:
            return Step.RESEND_RESULT
        if self.state is State.COMPLETING and self.offer is not None and result.checkout_id == self.offer.checkout_id:
            return Step.IGNORE
        if self.state is not State.AWAITING_CONFIRMATION or self.offer is None:
            raise SessionError(
                f"session {self.session_id} has no proposal awaiting an answer", ErrorCode.STALE_CHECKOUT
            )
        if result.checkout_id != self.offer.checkout_id:
            raise SessionError(f"checkout {result.checkout_id} is not the one on offer", ErrorCode.STALE_CHECKOUT)
        if result.checkout_hash != self.offer.checkout_hash:
            raise SessionError("the confirmation names another version of the cart", ErrorCode.HASH_MISMATCH)
        if result.display_digest != presentation_digest(self.offer.proposal, result.modality):
            raise SessionError(
                f"what the device presented is not what the SDK presents for {result.modality}",
                ErrorCode.DISPLAY_MISMATCH,
            )
        self.state = State.COMPLETING
        if self.confirmed is not None:
            return Step.COMPLETE  # an earlier completion got no answer: finish that one, same key
        if now > self.offer.expires_at or result.decision is not Decision.CONFIRM:
            return Step.CANCEL
        self.confirmed = result
        self.idempotency_key = result.idempotency_key or self.idempotency_key  # the device's, through any gateway
        return Step.COMPLETE

    def on_complete_failed(self) -> None:
        """The checkout gave no answer. The order may exist, so the session never cancels now: the
        next answer from the device, or the gateway's own retry, completes again with the first
        confirmation and the same idempotency key, which cannot order twice."""
        if self.state is State.COMPLETING:
            self.state = State.AWAITING_CONFIRMATION
            self.touched = time.monotonic()
            self.unanswered += 1

    def needs_retry(self, now_mono: float, after: float, most: float = 60.0) -> bool:
        """A completion got no answer and nothing has retried it since: `after` seconds ago for the
        first retry, doubling with every unanswered one up to `most` (a checkout that stays down is
        asked once a minute, not hammered)."""
        return (
            self.state is State.AWAITING_CONFIRMATION
            and self.confirmed is not None
            and now_mono >= self.retry_at(after, most)
        )

    def retry_at(self, after: float, most: float = 60.0) -> float:
        """When (monotonic) an unanswered completion is due its next retry (see `needs_retry`)."""
        wait: float = min(after * 2.0 ** max(self.unanswered - 1, 0), most)
        return self.touched + wait

    def idle_since(self, now: float) -> float | None:
        """Seconds this session has been idle (no request in progress, none on offer), else None."""
        return now - self.touched if self.state is State.IDLE else None

    def expired(self, now: float) -> bool:
        """Past the offer's expiry with no answer (a confirmation once sent never expires)."""
        return (
            self.state is State.AWAITING_CONFIRMATION
            and self.confirmed is None
            and self.offer is not None
            and now > self.offer.expires_at
        )

    def end(self, result: OrderResult) -> None:
        """End with `result`, keeping only what a resend needs: the result (a resent request or
        confirmation gets it again); the proposal, the offer and the confirmation are let go (the
        checkout's store keeps the outcome for any gateway that is asked later)."""
        self.result, self.state, self.touched = result, State.ENDED, time.monotonic()
        self.issued = self.offer = self.confirmed = None
