"""Shared pieces for the consent tests: a verifier on a real SQLite file or PostgreSQL database, proposals from the demo
catalog, offers as the gateway makes them, and mandates signed (or forged) as devices would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import MandateClaims, sign_mandate
from device_sdk.consent.readback import confirmation_request
from device_sdk.platform.checkout.audit import AuditLog, trail
from device_sdk.platform.checkout.backend import Completion, new_idempotency_key
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.policy import PolicyBook
from device_sdk.platform.checkout.profiles import DeviceProfile
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, new_id
from device_sdk.protocol.messages import (
    CheckoutProposal,
    ConfirmationRequest,
    ConfirmationResult,
    IssuedProposal,
    ProposalLine,
)
from simulators.catalog import demo_catalog

AUDIENCE = "shop-checkout:test"


def make_proposal(
    device_id: str = "speaker-1", items: tuple[tuple[str, int], ...] = (("bat-aa-4", 2), ("milk-1l", 1))
) -> IssuedProposal:
    catalog = demo_catalog()
    lines = []
    for sku, qty in items:
        product = catalog.product(sku)
        assert product is not None, sku
        lines.append(
            ProposalLine(
                sku=sku,
                name=product.name,
                qty=qty,
                unit=product.unit,
                unit_price_minor=product.price_minor,
                line_total_minor=qty * product.price_minor,
                seller=catalog.merchant(product.merchant_id),
                category=product.category,
            )
        )
    proposal = CheckoutProposal(
        checkout_id=new_id("co"), request_id=new_id("ar"), device_id=device_id, session_id=new_id("ses"),
        merchant=catalog.payee({line.seller.id for line in lines}), currency="CNY", lines=lines,
        total_minor=sum(line.line_total_minor for line in lines), created_at=time.time(),
    )  # fmt: skip
    return IssuedProposal(proposal, proposal.encode())


@dataclass
class Shop:
    """A verifier with two enrolled devices, and helpers to offer, confirm and forge."""

    db: Database
    verifier: ConsentVerifier
    keys: dict[str, SigningKey] = field(default_factory=dict)

    def enroll(self, device_id: str, kind: DeviceKind = DeviceKind.SPEAKER, pin: str | None = None) -> SigningKey:
        """A new key for `device_id`, provisioned as a `kind` (with its capabilities) and its `pin`."""
        key = SigningKey.generate()
        self.verifier.registry.rotate(device_id, key.public)
        self.verifier.registry.describe(device_id, DeviceProfile.of(kind))
        if pin is not None:
            self.verifier.step_up.set_pin(device_id, pin)
        self.keys[device_id] = key
        return key

    def offer(self, issued: IssuedProposal | None = None, lifetime: int = 300) -> ConfirmationRequest:
        """Open a proposal and make the offer the gateway would send."""
        issued = issued or make_proposal()
        terms = self.verifier.open(issued, lifetime)
        return confirmation_request(issued.proposal, issued.checkout_hash, new_id("req"), terms, time.time() + 120)

    def claims(self, offer: ConfirmationRequest, **changes: Any) -> MandateClaims:
        """The claims an honest device signs for `offer`, with `changes` applied."""
        now = int(time.time())
        fields: dict[str, Any] = {
            "jti": new_id("man"), "aud": offer.consent.audience, "nonce": offer.consent.nonce, "iat": now,
            "exp": now + 300, "checkout_id": offer.checkout_id, "checkout_hash": offer.checkout_hash,
            "payee": offer.proposal.merchant.id, "amount_minor": offer.proposal.total_minor,
            "currency": offer.proposal.currency, "payment_handler": offer.consent.payment_handler,
            "device_id": offer.proposal.device_id, "session_id": offer.session_id, "modality": Modality.VOICE,
            "display_digest": offer.display_digest,
        }  # fmt: skip
        fields.update(changes)
        return MandateClaims(**fields)

    def completion(
        self,
        offer: ConfirmationRequest,
        token: str | None,
        *,
        modality: Modality = Modality.VOICE,
        device_id: str | None = None,
        key: str | None = None,
    ) -> Completion:
        answer = ConfirmationResult(
            session_id=offer.session_id, checkout_id=offer.checkout_id, checkout_hash=offer.checkout_hash,
            decision=Decision.CONFIRM, modality=modality, display_digest=offer.display_digest, mandate=token,
        )  # fmt: skip
        return Completion(offer.checkout_id, offer.checkout_hash, device_id or offer.proposal.device_id,
                          offer.session_id, answer, key or new_idempotency_key())  # fmt: skip

    def confirm(
        self, offer: ConfirmationRequest, *, signer: str | None = None, modality: Modality = Modality.VOICE,
        **changes: Any,
    ) -> Completion:  # fmt: skip
        """A completion carrying a mandate signed by `signer`'s key (default: the owner's)."""
        key = self.keys[signer or offer.proposal.device_id]
        token = sign_mandate(key, self.claims(offer, modality=modality, **changes))
        return self.completion(offer, token, modality=modality)

    charges: list[str] = field(default_factory=list)

    def place(self, proposal: CheckoutProposal, key: str) -> str:
        """The payment channel: idempotent per key, as the verifier requires."""
        self.charges.append(key)
        return f"ord_{key}"

    def complete(self, completion: Completion) -> Any:
        return self.verifier.complete(completion, self.place)

    def refusals(self, session_id: str) -> list[str]:
        return [r["code"] for r in trail(self.db.url, session_id) if r["kind"] == "refusal"]


def open_shop(path: str | Path, policy: PolicyBook | None = None) -> Iterator[Shop]:
    with Database(path) as db:
        verifier = ConsentVerifier(db, AuditLog.open(db), audience=AUDIENCE, policy=policy)
        shop = Shop(db, verifier)
        shop.enroll("speaker-1")
        shop.enroll("speaker-2")
        yield shop
