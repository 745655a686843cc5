"""The step-up messages: the PIN a device's user said or typed for one offer, and the platform's
single-use proof that it checked out (see `device_sdk.platform.checkout.step_up`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .fields import Id, Sha256Hex, WireMessage

Pin = Annotated[str, Field(pattern=r"^[0-9]{4,12}$", repr=False)]
"""A step-up PIN: 4 to 12 digits, as the user said or typed them."""
StepUpProof = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{43}$")]
"""256 random bits (base64url) that the platform issues once a PIN checked out."""


class StepUp(WireMessage):
    """The PIN the user said or typed for a `voice_pin` confirmation of one offer, for the platform
    to check against the salted hash kept since provisioning (never on the device). Answered with
    `step_up.result`, or an `error`: `step_up_failed` (tries left in its text), `step_up_locked`."""

    type: Literal["step_up"] = "step_up"
    step_up_id: Id = Field(description="The try's own id: a resend of it is answered, not counted, again.")
    session_id: Id
    checkout_id: Id
    checkout_hash: Sha256Hex
    pin: Pin


class StepUpResult(WireMessage):
    """The PIN checked out: a single-use proof bound to this device and checkout, which the device
    signs into its `voice_pin` mandate (claim `step_up`) before `expires_at`."""

    type: Literal["step_up.result"] = "step_up.result"
    session_id: Id
    checkout_id: Id
    proof: StepUpProof
    expires_at: float
