"""The checkout behind the confirmation gate: the interface a payment backend implements.

The gateway opens a checkout for every proposal it shows, completes it only with the device's
confirmation for that exact proposal, and cancels it otherwise. A backend must refuse anything
else on its own too (defence in depth) and never place two orders for one checkout.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol

from device_sdk.protocol.errors import CheckoutError, ErrorCode
from device_sdk.protocol.fields import Outcome
from device_sdk.protocol.messages import (
    CheckoutProposal,
    ConfirmationResult,
    ConsentTerms,
    IssuedProposal,
    OrderResult,
    OrderStatusResult,
    decode,
)


@dataclass(frozen=True)
class Completion:
    """A request to turn a confirmed checkout into an order.

    `device_id` is the device whose own topic carried the confirmation (not a payload field);
    `confirmation.mandate` carries the device-signed consent mandate. The idempotency key is the
    device's (`confirmation.idempotency_key`), or else the session's: every retry of one
    confirmation carries the same key, through any gateway.
    """

    checkout_id: str
    checkout_hash: str
    device_id: str
    session_id: str
    confirmation: ConfirmationResult
    idempotency_key: str = field(default_factory=lambda: new_idempotency_key())


def new_idempotency_key() -> str:
    """128 random bits."""
    return f"idem_{secrets.token_hex(16)}"


def as_issued(issued: IssuedProposal) -> CheckoutProposal:
    """The proposal read again from its bytes as issued (not the parsed copy beside them), or
    `CheckoutError` (`bad_proposal`) when they are malformed or disagree with that copy."""
    try:
        proposal = decode(issued.raw)
    except ValueError as exc:
        raise CheckoutError(f"malformed proposal: {exc}", ErrorCode.BAD_PROPOSAL) from None
    if not isinstance(proposal, CheckoutProposal) or proposal != issued.proposal:
        raise CheckoutError("the proposal does not match its bytes", ErrorCode.BAD_PROPOSAL)
    return proposal


class CheckoutBackend(Protocol):
    async def open(self, issued: IssuedProposal) -> ConsentTerms:
        """Record a proposal as issued (its bytes and hash) and return the terms its mandate must meet;
        refuse a malformed or disallowed one with `CheckoutError` (its outcome says why)."""

    async def complete(self, completion: Completion) -> OrderResult:
        """Place the order once, or raise `CheckoutError` (with its outcome) and place nothing.

        The same idempotency key with the same confirmation returns the same result. Any other
        exception leaves the outcome unknown: the order may be placed, later, exactly once.
        """

    async def status(self, device_id: str, session_id: str, checkout_id: str) -> OrderStatusResult:
        """How the checkout of `device_id`'s session (or one handed to it) stands in the store: open,
        pending (admitted, its order being placed) or ended with its result; `ConsentError`
        (`unknown_checkout`) for a checkout that is not theirs. Any gateway can answer it."""

    async def settle_pending(self, older_than: float) -> int:
        """Settle completions admitted over `older_than` seconds ago whose order is not known (a crash
        between the single-use mark and the merchant's answer), asking the merchant again under the
        same completion key, so an order is never placed twice; returns how many were settled."""

    async def cancel(self, checkout_id: str, outcome: Outcome, reason: str) -> None:
        """Close a checkout without an order; a later completion of it is refused."""

    async def hand_over(self, checkout_id: str, device_id: str) -> tuple[str, ConsentTerms]:
        """Hand the open offer of `device_id` to the phone paired with it at provisioning; return
        that phone and the terms its mandate must meet (`phone_sheet`), or raise `ConsentError`
        (`not_paired`). From then on only the phone's key signs for the offer."""

    async def step_up(self, device_id: str, checkout_id: str, checkout_hash: str, pin: str) -> tuple[str, float]:
        """Check the PIN `device_id` sent for its open checkout against the one set at provisioning;
        return a single-use proof for its `voice_pin` mandate and when it expires, or raise
        `ConsentError` (`step_up_failed`, `step_up_locked`, ...). Tries are limited; see `step_up`."""
