"""What the platform checks in a merchant's checkout before it is read back or ordered.

UCP's own models accept totals that do not add up, floats and strings for amounts and an empty
`links`; the merchant's signature is not theirs to check. So each state a merchant returns is
checked here: its detached authorisation against the profile's keys, a known currency, integer
amounts, totals that add up (each line's and the checkout's: exactly one subtotal and one total),
links, its expiry, and that it is the proposal read back (same items, quantities, prices, total).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from device_sdk.protocol.errors import CheckoutError, ErrorCode
from device_sdk.protocol.messages import CheckoutProposal

from .money import exponent
from .signing import verify_detached

TERMS = ("id", "currency", "line_items", "totals")
"""What a confirmation binds: a change to any of these after it is a changed cart."""


def check_state(checkout: dict[str, Any], keys: list[dict[str, Any]], now: float) -> str:
    """Check one checkout state as the merchant returned it; the signing key's kid."""
    kid = verify_detached(checkout, keys)
    currency = checkout.get("currency")
    if not isinstance(currency, str):
        raise CheckoutError("the checkout names no currency", ErrorCode.UNKNOWN_CURRENCY)
    exponent(currency)
    lines = checkout.get("line_items")
    if not isinstance(lines, list) or not lines:
        raise CheckoutError("the checkout has no line items", ErrorCode.TOTALS_MISMATCH)
    subtotal = 0
    for line in lines:
        price, quantity = _int(line["item"]["price"]), _int(line["quantity"])
        line_totals = _totals(line.get("totals"), f"line {line.get('id')}")
        if line_totals["subtotal"] != price * quantity:
            raise CheckoutError(f"line {line.get('id')}: subtotal is not price x quantity", ErrorCode.TOTALS_MISMATCH)
        subtotal += line_totals["subtotal"]
    totals = _totals(checkout.get("totals"), "the checkout")
    if totals["subtotal"] != subtotal:
        raise CheckoutError("the checkout's subtotal is not the sum of its lines", ErrorCode.TOTALS_MISMATCH)
    if not checkout.get("links"):
        raise CheckoutError("the checkout has no links (terms, privacy)", ErrorCode.BAD_PROPOSAL)
    if checkout.get("status") == "requires_escalation" and not checkout.get("continue_url"):
        raise CheckoutError("an escalation without a continue_url", ErrorCode.BAD_PROPOSAL)
    expires = checkout.get("expires_at")
    if not isinstance(expires, str):
        raise CheckoutError("the checkout has no expiry", ErrorCode.CHECKOUT_EXPIRED)
    try:
        at = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    except ValueError:
        raise CheckoutError(f"unreadable expiry {expires!r}", ErrorCode.CHECKOUT_EXPIRED) from None
    if at.tzinfo is None or at.astimezone(UTC).timestamp() <= now:
        raise CheckoutError(f"the merchant's checkout expired at {expires}", ErrorCode.CHECKOUT_EXPIRED)
    return kid


def check_matches(checkout: dict[str, Any], proposal: CheckoutProposal) -> None:
    """The checkout is the proposal the device reads back: same currency, items, quantities, prices, total."""
    if checkout["currency"] != proposal.currency:
        raise CheckoutError(
            f"the merchant charges in {checkout['currency']}, not {proposal.currency}", ErrorCode.AMOUNT_MISMATCH
        )
    ours = {line.sku: (line.qty, line.unit_price_minor) for line in proposal.lines}
    theirs = {line["item"]["id"]: (line["quantity"], line["item"]["price"]) for line in checkout["line_items"]}
    if ours != theirs or len(theirs) != len(checkout["line_items"]):
        raise CheckoutError("the merchant's items or prices differ from the proposal", ErrorCode.AMOUNT_MISMATCH)
    total = _totals(checkout["totals"], "the checkout")["total"]
    if total != proposal.total_minor:
        raise CheckoutError(
            f"the merchant's total {total} is not the proposal's {proposal.total_minor}", ErrorCode.TOTALS_MISMATCH
        )


def check_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    """The checkout confirmed (`before`) is the one about to be completed (`after`)."""
    changed = [name for name in TERMS if before.get(name) != after.get(name)]
    if changed:
        raise CheckoutError(f"the merchant changed {', '.join(changed)} after the confirmation", ErrorCode.CART_CHANGED)


def _int(value: Any) -> int:
    if type(value) is not int:  # not 2500.0, "2500" or True, which UCP's models let through
        raise CheckoutError(f"amount {value!r} is not an integer of minor units", ErrorCode.TOTALS_MISMATCH)
    return value


def _totals(entries: Any, where: str) -> dict[str, int]:
    """Exactly one subtotal and one total, and the total the sum of the other entries."""
    if not isinstance(entries, list):
        raise CheckoutError(f"{where} has no totals", ErrorCode.TOTALS_MISMATCH)
    kinds = [entry.get("type") for entry in entries]
    if kinds.count("subtotal") != 1 or kinds.count("total") != 1:
        raise CheckoutError(f"{where} needs exactly one subtotal and one total", ErrorCode.TOTALS_MISMATCH)
    amounts = {entry["type"]: _int(entry.get("amount")) for entry in entries}
    others = sum(_int(entry.get("amount")) for entry in entries if entry["type"] != "total")
    if amounts["total"] != others:
        raise CheckoutError(f"{where}: the total is not the sum of its entries", ErrorCode.TOTALS_MISMATCH)
    return amounts
