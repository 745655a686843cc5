"""The offers a conformance run makes (a real one, one with a read-back of another cart, one already
expired, one for a request never sent) and the checks of the device's answer and its mandate."""

from __future__ import annotations

import hashlib
import secrets
import time

from device_sdk.consent.keys import PublicKey
from device_sdk.consent.mandate import MAX_LIFETIME, open_mandate
from device_sdk.consent.readback import compose_readback, confirmation_request, display_digest, presentation_digest
from device_sdk.locale import DEFAULT_LOCALE, LOCALES
from device_sdk.protocol.errors import DeviceSdkError
from device_sdk.protocol.fields import DeviceKind, Modality, new_id
from device_sdk.protocol.messages import (
    AgentRequest,
    CheckoutProposal,
    ConfirmationRequest,
    ConfirmationResult,
    ConsentTerms,
    Merchant,
    ProposalLine,
)

SHOP = Merchant(id="conformance-shop", name="Conformance Test Shop")
MODALITIES = {
    DeviceKind.SPEAKER: [Modality.VOICE, Modality.TEXT, Modality.BUTTON],
    DeviceKind.GLASSES: [Modality.LENS_TAP, Modality.VOICE],
    DeviceKind.PHONE: [Modality.PHONE_SHEET],
}
"""How a device of each kind may confirm a conformance offer (any other kind: all of these)."""


def modalities_for(kind: DeviceKind) -> list[Modality]:
    return MODALITIES.get(
        kind, [Modality.VOICE, Modality.TEXT, Modality.BUTTON, Modality.LENS_TAP, Modality.PHONE_SHEET]
    )


def proposal_for(request: AgentRequest, *, qty: int = 2, price: int = 1290) -> CheckoutProposal:
    """A small cart for `request` in its locale (one the SDK has data for, else en-US)."""
    line = ProposalLine(
        sku="bat-aa-4",
        name="AA batteries, pack of 4",
        qty=qty,
        unit="pack",
        unit_price_minor=price,
        line_total_minor=qty * price,
        seller=SHOP,
    )
    return CheckoutProposal(
        checkout_id=new_id("co"),
        request_id=request.request_id,
        device_id=request.device_id,
        session_id=request.session_id,
        merchant=SHOP,
        currency="CNY",
        lines=[line],
        total_minor=line.line_total_minor,
        created_at=time.time(),
        locale=request.locale if request.locale in set(LOCALES) - {DEFAULT_LOCALE} else None,
    )


def offer_for(
    request: AgentRequest, kind: DeviceKind, run_id: str, *, expires_in: float = 120.0, request_id: str | None = None
) -> ConfirmationRequest:
    """A well-formed offer for `request` (or, with `request_id`, for a request the device never sent)."""
    proposal = proposal_for(request)
    if request_id is not None:
        proposal = proposal.model_copy(update={"request_id": request_id})
    terms = ConsentTerms(
        audience=f"conformance:{run_id}",
        nonce=secrets.token_urlsafe(24),
        payment_handler="conformance-wallet",
        modalities=modalities_for(kind),
    )
    checkout_hash = hashlib.sha256(proposal.encode()).hexdigest()
    return confirmation_request(proposal, checkout_hash, proposal.request_id, terms, time.time() + expires_in)


def tampered(offer: ConfirmationRequest) -> ConfirmationRequest:
    """The offer with the read-back (and its digest) of a cheaper cart than its proposal."""
    cheaper = proposal_for(
        AgentRequest(
            request_id=offer.request_id,
            device_id=offer.proposal.device_id,
            session_id=offer.session_id,
            text="x",
            locale=offer.proposal.language,
        ),
        qty=1,
        price=1,
    )
    text = compose_readback(cheaper)
    return offer.model_copy(update={"readback": text, "display_digest": display_digest(text)})


def binding_problems(offer: ConfirmationRequest, answer: ConfirmationResult) -> list[str]:
    """What in a confirmation does not name its offer (empty: it does)."""
    problems = []
    for field in ("session_id", "checkout_id", "checkout_hash"):
        if getattr(answer, field) != getattr(offer, field):
            problems.append(f"{field} {getattr(answer, field)!r} is not the offer's {getattr(offer, field)!r}")
    if answer.modality not in offer.consent.modalities:
        problems.append(f"modality {answer.modality.value} is not one the offer allows")
    return problems


def expected_digest(offer: ConfirmationRequest, modality: Modality) -> str:
    return presentation_digest(offer.proposal, modality)


class MandateCheck:
    """A confirmation's mandate opened with the device's key: what each requirement finds wrong."""

    def __init__(
        self, offer: ConfirmationRequest, answer: ConfirmationResult, key: PublicKey | None, device_id: str
    ) -> None:
        self.offer, self.answer, self.device_id = offer, answer, device_id
        self.signed_problem: str | None = None
        self.claims = None
        if answer.mandate is None:
            self.signed_problem = "the confirmation carries no mandate"
        elif key is None:
            self.signed_problem = "no public key to verify the mandate with (device.info public_key or --device-key)"
        else:
            try:
                self.claims = open_mandate(answer.mandate, key).claims
            except DeviceSdkError as exc:
                self.signed_problem = f"the mandate does not verify: {exc}"

    def hash_problems(self) -> list[str]:
        c, o = self.claims, self.offer
        if c is None:
            return []
        p = o.proposal
        wanted = {
            "checkout_id": o.checkout_id,
            "checkout_hash": o.checkout_hash,
            "amount_minor": p.total_minor,
            "currency": p.currency,
            "payee": p.merchant.id,
        }
        return [f"{k} {getattr(c, k)!r}, the offer's is {v!r}" for k, v in wanted.items() if getattr(c, k) != v]

    def terms_problems(self) -> list[str]:
        c, t = self.claims, self.offer.consent
        if c is None:
            return []
        wanted = {
            "nonce": t.nonce,
            "aud": t.audience,
            "payment_handler": t.payment_handler,
            "device_id": self.device_id,
            "session_id": self.offer.session_id,
        }
        problems = [f"{k} {getattr(c, k)!r}, wanted {v!r}" for k, v in wanted.items() if getattr(c, k) != v]
        if not 0 < c.exp - c.iat <= min(t.max_lifetime, MAX_LIFETIME):
            problems.append(f"lifetime {c.exp - c.iat} s is not within 1..{t.max_lifetime} s")
        return problems

    def digest_problems(self) -> list[str]:
        wanted = expected_digest(self.offer, self.answer.modality)
        problems = []
        if self.answer.display_digest != wanted:
            shown = self.answer.display_digest[:12]
            problems.append(
                f"the confirmation's display_digest {shown}... is not that of the "
                f"{self.answer.modality.value} presentation {wanted[:12]}..."
            )
        if self.claims is not None and self.claims.display_digest != wanted:
            signed = self.claims.display_digest[:12]
            problems.append(f"the mandate's display_digest {signed}... is not {wanted[:12]}...")
        return problems
