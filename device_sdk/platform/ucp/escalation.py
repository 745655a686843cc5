"""A step-up our risk policy asks for, as UCP says it: `requires_escalation` with a `continue_url`.

When the policy does not let the device confirm a checkout by voice alone (over the voice cap, or no
cap for its currency: `RiskPolicy.voice_allowed`), the platform presents the merchant's checkout as
`requires_escalation` until the device's step-up (its PIN, `StepUp.prove`) is verified; the AP2
mandates are not issued before (the verifier refuses a weak or unproved confirmation first).

The `continue_url` names where the user completes the step-up. The platform serves no web page
for it: the step-up is done on the device itself (the PIN said or typed, our `step_up` message) or
on its paired phone's sheet, so the default names it as a URN, `urn:device-sdk:step-up:<checkout
id>`; a deployment with its own step-up page sets `UcpCheckout.step_up_url` to that https
template.
"""

from __future__ import annotations

from typing import Any

STEP_UP_URL = "urn:device-sdk:step-up:{checkout_id}"
"""Where the user completes the platform's step-up (`{checkout_id}`: our checkout id)."""


def escalated(checkout: dict[str, Any], continue_url: str) -> dict[str, Any]:
    """The merchant's `checkout` as the platform presents it while its step-up is pending: status
    `requires_escalation`, `continue_url`, and an error message saying why. The merchant's
    `ap2.merchant_authorization` is left out: it signs the merchant's state, not this one."""
    message = {
        "type": "error",
        "code": "step_up_required",
        "content": "the platform's policy needs a step-up (a PIN or the phone) before this order",
        "severity": "requires_buyer_review",
    }
    presented = {key: value for key, value in checkout.items() if key != "ap2"}
    return presented | {
        "status": "requires_escalation",
        "continue_url": continue_url,
        "messages": [*checkout.get("messages", []), message],
    }
