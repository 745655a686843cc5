"""The read-back: what the device says or shows before checkout, composed by the SDK from the proposal.

The agent never writes confirmation text. Composition is deterministic, so the gateway, the
device and the verifier all derive the same text and the same display digest from one proposal.
"""

from __future__ import annotations

from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.protocol.fields import Modality, sha256_hex
from device_sdk.protocol.messages import CheckoutProposal, ConfirmationRequest, ConsentTerms

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


def format_amount(minor: int, currency: str, locale: str = DEFAULT_LOCALE) -> str:
    """`2580, "CNY"` -> `"25.80 CNY"` (in zh-CN `"25.80 元"`), by the currency's minor-unit exponent."""
    exponent = _EXPONENT.get(currency, 2)
    major, rest = divmod(minor, 10**exponent)
    amount = f"{major}.{rest:0{exponent}d}" if exponent else str(minor)
    data = locale_for(locale)
    return data.amount.format(amount=amount, currency=data.currency_names.get(currency, currency))


def compose_readback(proposal: CheckoutProposal) -> str:
    """Items, quantities, sellers, total and payee, then how to answer, as one spoken paragraph in
    the proposal's locale; a sponsored item is said after its disclosure ("Sponsored: ...")."""
    data = locale_for(proposal.language)
    text = data.readback
    parts = [text.title]
    for line in proposal.lines:
        amount = format_amount(line.line_total_minor, proposal.currency, proposal.language)
        said = text.line.format(qty=line.qty, unit=data.unit(line.unit, line.qty), name=line.name,
                                seller=line.seller.name, amount=amount)  # fmt: skip
        parts.append(text.sponsored.format(line=said) if line.sponsored else said)
    total = format_amount(proposal.total_minor, proposal.currency, proposal.language)
    parts.append(text.total.format(total=total, payee=proposal.merchant.name))
    parts.append(text.answer)
    return text.join.join(parts)


ANSWER_PROMPT = locale_for(DEFAULT_LOCALE).readback.answer
"""How an en-US read-back ends (any locale's: `locale_for(tag).readback.answer`)."""


def compose_lens_card(proposal: CheckoutProposal) -> str:
    """The card a pair of glasses shows on the lens, one line per row: a title, per item its
    quantity, name and total, then its seller, then the total and payee, then how to answer. Its
    digest is what a `lens_tap` mandate signs; `device_sdk.consent.lens` draws it."""
    text = locale_for(proposal.language).lens
    rows = [text.title]
    for line in proposal.lines:
        amount = format_amount(line.line_total_minor, proposal.currency, proposal.language)
        if line.sponsored:
            rows.append(text.sponsored)
        rows.append(text.line.format(qty=line.qty, name=line.name, amount=amount))
        rows.append(text.seller.format(seller=line.seller.name))
    rows.append(text.total.format(total=format_amount(proposal.total_minor, proposal.currency, proposal.language)))
    rows.append(text.payee.format(payee=proposal.merchant.name))
    rows.append(text.answer)
    return "\n".join(rows)


def compose_phone_sheet(proposal: CheckoutProposal) -> str:
    """The phone's system confirmation sheet, one line per row: a title, the payee, per item its
    quantity, name, seller and total, the total, then the two buttons. Its digest is what a
    `phone_sheet` mandate signs."""
    text = locale_for(proposal.language).sheet
    rows = [text.title, text.payee.format(payee=proposal.merchant.name)]
    for line in proposal.lines:
        amount = format_amount(line.line_total_minor, proposal.currency, proposal.language)
        if line.sponsored:
            rows.append(text.sponsored)
        rows.append(text.line.format(qty=line.qty, name=line.name, seller=line.seller.name, amount=amount))
    rows.append(text.total.format(total=format_amount(proposal.total_minor, proposal.currency, proposal.language)))
    rows.append(text.actions)
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
