"""The read-back: what the device says or shows before checkout, composed by the SDK from the proposal.

The agent never writes confirmation text. Composition is deterministic, so the gateway, the
device and the verifier all derive the same text and the same display digest from one proposal.
"""

from __future__ import annotations

from device_sdk.protocol.fields import Modality, sha256_hex
from device_sdk.protocol.messages import CheckoutProposal, ConfirmationRequest, ConsentTerms, ProposalLine

# ISO 4217 minor-unit exponents that are not 2 (every other current currency has 2).
_EXPONENT = {
    **dict.fromkeys(
        ["BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV", "XAF",
         "XOF", "XPF"],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}  # fmt: skip
_PLURAL = {"box": "boxes", "bunch": "bunches", "case": "cases", "piece": "pieces", "pair": "pairs"}


def format_amount(minor: int, currency: str) -> str:
    """`2580, "CNY"` -> `"25.80 CNY"`, using the currency's minor-unit exponent."""
    exponent = _EXPONENT.get(currency, 2)
    if exponent == 0:
        return f"{minor} {currency}"
    major, rest = divmod(minor, 10**exponent)
    return f"{major}.{rest:0{exponent}d} {currency}"


def _unit(line: ProposalLine) -> str:
    if line.qty == 1:
        return line.unit
    return _PLURAL.get(line.unit, line.unit if line.unit.endswith("s") else f"{line.unit}s")


def compose_readback(proposal: CheckoutProposal) -> str:
    """Items, quantities, sellers, total and payee, then how to answer, as one spoken paragraph."""
    parts = ["Please confirm your order."]
    for line in proposal.lines:
        parts.append(
            f"{line.qty} {_unit(line)} of {line.name}, from {line.seller.name}, "
            f"{format_amount(line.line_total_minor, proposal.currency)}."
        )
    parts.append(f"Total {format_amount(proposal.total_minor, proposal.currency)}, paid to {proposal.merchant.name}.")
    parts.append(ANSWER_PROMPT)
    return " ".join(parts)


ANSWER_PROMPT = "Say confirm to place the order, or cancel."
LENS_PROMPT = "Tap to confirm, swipe to cancel"


def compose_lens_card(proposal: CheckoutProposal) -> str:
    """The card a pair of glasses shows on the lens, one line per row: a title, per item its
    quantity, name and total, then its seller, then the total and payee, then how to answer. Its
    digest is what a `lens_tap` mandate signs; `device_sdk.consent.lens` draws it."""
    rows = ["Confirm order"]
    for line in proposal.lines:
        rows.append(f"{line.qty} x {line.name} | {format_amount(line.line_total_minor, proposal.currency)}")
        rows.append(f"  from {line.seller.name}")
    rows.append(f"Total {format_amount(proposal.total_minor, proposal.currency)}")
    rows.append(f"Paid to {proposal.merchant.name}")
    rows.append(LENS_PROMPT)
    return "\n".join(rows)


SHEET_ACTIONS = "[Cancel]  [Confirm]"


def compose_phone_sheet(proposal: CheckoutProposal) -> str:
    """The phone's system confirmation sheet, one line per row: a title, the payee, per item its
    quantity, name, seller and total, the total, then the two buttons. Its digest is what a
    `phone_sheet` mandate signs."""
    rows = ["Confirm purchase", f"Pay {proposal.merchant.name}"]
    for line in proposal.lines:
        rows.append(
            f"{line.qty} x {line.name} ({line.seller.name}) {format_amount(line.line_total_minor, proposal.currency)}"
        )
    rows.append(f"Total {format_amount(proposal.total_minor, proposal.currency)}")
    rows.append(SHEET_ACTIONS)
    return "\n".join(rows)


def display_digest(text: str) -> str:
    """SHA-256 (hex) of the UTF-8 text that was presented to the user."""
    return sha256_hex(text)


def confirmation_request(
    proposal: CheckoutProposal, checkout_hash: str, request_id: str, terms: ConsentTerms, expires_at: float
) -> ConfirmationRequest:
    """The offer a device presents: the proposal, the SDK's read-back and its digest, the consent terms."""
    readback = compose_readback(proposal)
    return ConfirmationRequest(
        session_id=proposal.session_id,
        request_id=request_id,
        checkout_id=proposal.checkout_id,
        checkout_hash=checkout_hash,
        proposal=proposal,
        readback=readback,
        display_digest=display_digest(readback),
        consent=terms,
        expires_at=expires_at,
    )


def presentation(proposal: CheckoutProposal, modality: Modality) -> str:
    """What the SDK presents for `proposal` when the user confirms by `modality`: the lens card for
    `lens_tap`, the system sheet for `phone_sheet`, else the read-back, spoken or shown."""
    if modality is Modality.LENS_TAP:
        return compose_lens_card(proposal)
    if modality is Modality.PHONE_SHEET:
        return compose_phone_sheet(proposal)
    return compose_readback(proposal)


def presentation_digest(proposal: CheckoutProposal, modality: Modality) -> str:
    return display_digest(presentation(proposal, modality))
