"""The consent verifier: fail closed, single use, policy-checked, idempotent, audited.

A checkout opens each proposal through `open`, which stores the proposal's bytes and issues the
consent terms (audience, a fresh nonce, the payment channel, the modalities the policy allows).
`complete` then admits a completion only if every check passes; none is skipped for want of an
expected value, since every expected value comes from the verifier's own store:

1. the mandate is a compact JWS with header exactly {alg Ed25519, kid, typ}, at most 8 KiB;
2. its key is registered to the device that owns the session, and active (or retired after the
   mandate was issued), or, for an offer that device handed over (`hand_over`), to the phone it is
   still paired with; the Ed25519 signature verifies;
3. checkout id and hash, device, session, amount, currency and payee equal the stored proposal's;
4. the audience is this verifier; the nonce is the one issued for this checkout and unused;
5. `iat <= now + skew`, `exp > now` and `exp - iat <= 900 s`, checked once, when admitted;
6. the display digest is that of what the SDK renders for the proposal in the signed modality,
   and the unsigned confirmation says the same as the mandate;
7. the mandate id was never accepted before (a unique key in SQLite);
8. the risk policy: payment channel, categories and merchants, voice cap, daily cap, velocity;
9. the signer's provisioned kind can give the modality, and a `voice_pin` carries a PIN's proof (`step_up`).

The completion's idempotency key (128 bits or more) maps to its first result: the same key and
body get the same result, the same key with another body is a conflict. The checks, the single-use
marks and a pending outcome commit in one SQLite transaction, so concurrent submissions (threads or
processes) of one mandate admit one; only then is the merchant asked, under a key derived from the
idempotency key, and its order stored in the same record (`outcomes`): a crash between the steps
is settled later under the same key, never into a second order. Every refusal is recorded in the
audit log with its reason code.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from device_sdk.consent.keys import PublicKey
from device_sdk.consent.mandate import MAX_LIFETIME, SignedMandate, mandate_id, read_mandate, verify_mandate
from device_sdk.protocol.errors import CheckoutError, ConsentError, ErrorCode
from device_sdk.protocol.fields import Decision, Modality, Outcome, sha256_hex
from device_sdk.protocol.messages import (
    CheckoutProposal,
    ConsentTerms,
    IssuedProposal,
    OrderResult,
    OrderStatusResult,
    decode,
)

from . import consent_store
from .audit import AuditLog
from .backend import Completion
from .consent_store import CHECKOUT_STATE, SCHEMA, StoredCheckout, spending, stored_result
from .database import Database
from .disclosure import check_disclosed, record_disclosures
from .handover import hand_over
from .outcomes import SCHEMA as OUTCOMES_SCHEMA
from .outcomes import Pending, PlaceOrder, Verification, admit, pending_keys, pending_of, settle, status
from .policy import PolicyBook, RiskPolicy
from .registry import DeviceRegistry, KeyRecord
from .sql import CONFLICTS, Connection
from .step_up import StepUp, check_confirmation

IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{27,128}$")
"""At least 27 characters: 128 bits or more in base64url or hex with a prefix."""
PARSED_KEPT = 10_000
"""At most this many parsed open checkouts are kept (about 7.8 KB each); one past it is read from the store."""

log = logging.getLogger(__name__)


class ConsentVerifier:
    """Issues consent terms for proposals and admits completions only with a valid mandate."""

    def __init__(
        self,
        db: Database,
        audit: AuditLog,
        *,
        audience: str,
        payment_handler: str = "shop-wallet",
        policy: PolicyBook | None = None,
        clock: Callable[[], float] = time.time,
        skew: float = 60.0,
    ) -> None:
        self.db = db
        self.audit = audit
        self.audience = audience
        self.payment_handler = payment_handler
        self.policy = policy or PolicyBook()
        self.registry = DeviceRegistry(db)
        self.step_up = StepUp(db, audit, clock=clock)
        self.clock = clock
        self.skew = skew
        self.last: Verification | None = None
        self._keys: dict[str, PublicKey] = {}
        self._parsed: dict[str, tuple[tuple[bytes, str], CheckoutProposal, ConsentTerms, dict[Modality, str]]] = {}
        db.ensure_schema((*SCHEMA, *OUTCOMES_SCHEMA))

    # opening -----------------------------------------------------------------------------

    def open(self, issued: IssuedProposal, lifetime: int = 300) -> ConsentTerms:
        """Store the proposal as issued and issue its terms; refuse a cart the policy never allows."""
        proposal = issued.proposal
        policy = self.policy.for_device(proposal.device_id)
        terms = ConsentTerms(
            audience=self.audience,
            nonce=secrets.token_urlsafe(24),
            payment_handler=self.payment_handler,
            modalities=policy.modalities(proposal),
            max_lifetime=min(lifetime, MAX_LIFETIME),
        )

        terms_text = terms.model_dump_json()

        def job(conn: Connection) -> ConsentTerms | ConsentError:
            ids = {
                "device_id": proposal.device_id,
                "session_id": proposal.session_id,
                "checkout_id": proposal.checkout_id,
            }
            try:
                spent, recent = spending(conn, proposal, self.clock())
                self._check_limits(policy, proposal, spent, recent)
            except ConsentError as exc:
                self.audit.append(conn, "refusal", stage="open", code=exc.code.value, reason=exc.text, **ids)
                return exc  # raised once the refusal is on disk
            try:
                conn.execute(
                    "INSERT INTO checkouts (checkout_id, device_id, session_id, raw, hash, nonce, terms, currency,"
                    " opened_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        proposal.checkout_id,
                        proposal.device_id,
                        proposal.session_id,
                        issued.raw,
                        issued.checkout_hash,
                        terms.nonce,
                        terms_text,
                        proposal.currency,
                        self.clock(),
                    ),
                )
            except CONFLICTS:
                raise CheckoutError(f"checkout {proposal.checkout_id} exists already", ErrorCode.BAD_PROPOSAL) from None
            self.audit.append(
                conn,
                "terms",
                nonce_sha256=sha256_hex(terms.nonce),
                audience=terms.audience,
                payment_handler=terms.payment_handler,
                modalities=[m.value for m in terms.modalities],
                checkout_hash=issued.checkout_hash,
                **ids,
            )
            record_disclosures(self.audit, conn, proposal, ids)
            consent_store.prune_refusals(conn, self.clock())
            self._remember(issued.raw, proposal, terms, terms_text)
            return terms

        opened = self.db.call(job)
        if isinstance(opened, ConsentError):
            raise opened
        return opened

    def hand_over(self, checkout_id: str, device_id: str) -> tuple[str, ConsentTerms]:
        """Hand the open offer of `device_id` to the phone paired with it at provisioning
        (`handover.hand_over`): returns the phone and the terms its mandate must meet."""
        handed = self.db.call(lambda conn: hand_over(conn, self.audit, checkout_id, device_id, self.clock()))
        if isinstance(handed, ConsentError):
            raise handed
        return handed

    def cancel(self, checkout_id: str, outcome: Outcome, reason: str) -> None:
        """Close an open checkout without an order; its nonce can no longer be used."""

        def job(conn: Connection) -> None:
            row = conn.execute(
                "SELECT device_id, session_id FROM checkouts WHERE checkout_id = ? AND closed_at IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM completions WHERE ordered_checkout = ?)",
                (checkout_id, checkout_id),
            ).fetchone()
            if row is None:
                return
            conn.execute("UPDATE checkouts SET closed_at = ? WHERE checkout_id = ?", (self.clock(), checkout_id))
            self._parsed.pop(checkout_id, None)  # closed: never completed, so never parsed again
            self.audit.append(
                conn,
                "cancel",
                device_id=row[0],
                session_id=row[1],
                checkout_id=checkout_id,
                outcome=outcome.value,
                reason=reason,
            )

        self.db.call(job)

    # completing --------------------------------------------------------------------------

    def complete(self, completion: Completion, place: PlaceOrder) -> OrderResult:
        """Admit `completion` and place its order through `place`, or raise `ConsentError`.

        Safe to call from many threads and processes at once; blocks until the result is on disk.
        An exception from `place` other than a refusal leaves the completion pending: calling again
        with the same idempotency key (or `settle_pending`) asks `place` again under the same key.
        """
        body = _body_sha256(completion)
        opened: SignedMandate | ConsentError
        try:
            opened = self.check_signature(completion)  # the signature check runs here, in parallel
        except ConsentError as exc:
            opened = exc
        outcome = self.db.call(lambda conn: self._admit(conn, completion, body, opened))
        if isinstance(outcome, tuple):  # admitted now, or before and still pending: ask the merchant
            pending, seen = outcome
            outcome = settle(self.db, self.audit, pending, place)
            if seen is not None and isinstance(outcome, OrderResult):
                self.last = Verification(**seen, order=outcome)  # committed
        if isinstance(outcome, ConsentError):
            raise outcome
        return outcome

    def settle_pending(self, place: PlaceOrder, older_than: float = 0.0) -> int:
        """Settle the completions admitted over `older_than` seconds ago whose order is not known (a
        crash between the single-use mark and the merchant's answer): `place` is asked again under
        the same completion key, so an order placed before the crash is found, never placed twice.
        Returns how many were settled; one whose merchant gives no answer stays pending."""
        with self.db.reading() as conn:
            found = [pending_of(conn, key) for key in pending_keys(conn, self.clock() - older_than)]
        settled = 0
        for pending in found:
            if pending is None:
                continue
            try:
                settle(self.db, self.audit, pending, place)
            except Exception as exc:
                log.warning("checkout %s: still no answer from the merchant: %r", pending.proposal.checkout_id, exc)
                continue
            settled += 1
        return settled

    def status(self, device_id: str, session_id: str, checkout_id: str) -> OrderStatusResult:
        """How a checkout of `device_id` (its own, or one handed to it) stands in the store
        (`outcomes.status`); `ConsentError(unknown_checkout)` for anyone else's."""
        with self.db.reading() as conn:
            return status(conn, device_id, session_id, checkout_id)

    def check_signature(self, completion: Completion) -> SignedMandate:
        """Read the mandate and check its signature against the registered key (no store needed, so
        callers may run it on many threads); `complete` runs it and then everything else."""
        token = completion.confirmation.mandate
        if not token:
            raise ConsentError("no consent mandate came with the confirmation", ErrorCode.MANDATE_MISSING)
        read = read_mandate(token)
        public = self._keys.get(read.kid) or self.registry.public_key(read.kid)
        if public is None:
            raise ConsentError("the mandate's key is not registered", ErrorCode.UNKNOWN_KEY)
        self._keys[read.kid] = public
        return verify_mandate(read, public)

    def _admit(
        self,
        conn: Connection,
        completion: Completion,
        body: str,
        opened: SignedMandate | ConsentError,
    ) -> tuple[Pending, dict[str, Any] | None] | OrderResult | ConsentError:
        """The completion admitted (pending, with what was verified), pending since an earlier try,
        an earlier result, or a refusal."""
        key = completion.idempotency_key
        ids = {
            "device_id": completion.device_id,
            "session_id": completion.session_id,
            "checkout_id": completion.checkout_id,
        }
        if not isinstance(key, str) or not IDEMPOTENCY_KEY.match(key):
            text = "an idempotency key has at least 128 bits (27 to 128 characters of [A-Za-z0-9_-])"
            return self._refuse(conn, None, body, ids, ConsentError(text, ErrorCode.BAD_IDEMPOTENCY_KEY))
        row = conn.execute("SELECT body_sha256, result FROM completions WHERE idempotency_key = ?", (key,)).fetchone()
        if row is not None:
            if row[0] != body:
                text = "this idempotency key was used for another completion"
                return self._refuse(conn, None, body, ids, ConsentError(text, ErrorCode.IDEMPOTENCY_CONFLICT))
            pending = pending_of(conn, key)
            return (pending, None) if pending is not None else stored_result(row[1])
        try:
            if isinstance(opened, ConsentError):
                raise opened
            checkout = self._check(conn, completion, opened)
        except ConsentError as exc:
            return self._refuse(conn, key, body, ids, exc, completion.confirmation.mandate)
        claims, proposal = opened.claims, checkout.proposal
        pending = Pending(key, proposal, claims.payment_handler)
        admit(conn, pending, body, claims.jti, self.clock())
        self._parsed.pop(proposal.checkout_id, None)  # used: a resend is answered from the completion's row
        seen = {"mandate_id": claims.jti, "key_id": opened.kid, "device_id": proposal.device_id,
                "session_id": claims.session_id, "checkout_id": claims.checkout_id,
                "modality": claims.modality.value, "signer": claims.device_id}  # fmt: skip
        if claims.initiated_by is not None:  # a suggestion's: the claim is recorded with the consent
            seen["initiated_by"] = claims.initiated_by
        self.audit.append(conn, "verification", **{**seen, **ids}, accepted=True,
                          completion_key=pending.completion_key)  # fmt: skip
        return pending, seen

    def _check(self, conn: Connection, completion: Completion, opened: SignedMandate) -> StoredCheckout:
        claims, answer, now = opened.claims, completion.confirmation, self.clock()
        checkout = self._load(conn, completion.checkout_id, opened, now)
        if checkout is None:
            raise ConsentError(f"no checkout {completion.checkout_id}", ErrorCode.UNKNOWN_CHECKOUT)
        proposal, key = checkout.proposal, checkout.key
        signer = checkout.handed_to or proposal.device_id
        if key is None or key.device_id != signer or completion.device_id != proposal.device_id:
            if checkout.handed_to is not None:
                text = f"the offer was handed to {checkout.handed_to}: only its key signs for it"
            else:
                text = "the mandate is not signed by the key of the device that owns the session"
            raise ConsentError(text, ErrorCode.UNKNOWN_KEY)
        if checkout.handed_to is not None and not checkout.still_paired:
            raise ConsentError(
                f"{checkout.handed_to} is no longer paired with {proposal.device_id}", ErrorCode.NOT_PAIRED
            )
        if not key.valid_at(claims.iat, now):
            raise ConsentError(f"the device's key {key.kid} is {key.status}", ErrorCode.KEY_REVOKED)
        if claims.checkout_id != proposal.checkout_id:
            raise ConsentError("the mandate is for another checkout", ErrorCode.STALE_CHECKOUT)
        if (
            claims.device_id != signer
            or (completion.device_id, completion.session_id) != (proposal.device_id, proposal.session_id)
            or claims.session_id != proposal.session_id
        ):
            raise ConsentError("the mandate names another device or session", ErrorCode.SESSION_NOT_OWNED)
        if not (claims.checkout_hash == completion.checkout_hash == answer.checkout_hash == checkout.checkout_hash):
            raise ConsentError("the cart changed after it was confirmed", ErrorCode.HASH_MISMATCH)
        if claims.aud != self.audience:
            raise ConsentError(f"the mandate is for {claims.aud!r}, not this verifier", ErrorCode.WRONG_AUDIENCE)
        if claims.exp - claims.iat > MAX_LIFETIME or claims.exp - claims.iat > checkout.terms.max_lifetime:
            raise ConsentError("the mandate lives longer than allowed", ErrorCode.MANDATE_EXPIRED)
        if claims.exp <= now:
            raise ConsentError("the mandate has expired", ErrorCode.MANDATE_EXPIRED)
        if claims.exp > now + min(checkout.terms.max_lifetime + self.skew, MAX_LIFETIME):
            raise ConsentError("the mandate expires too far from now", ErrorCode.MANDATE_EXPIRED)
        if claims.iat > now + self.skew:
            raise ConsentError("the mandate is issued in the future", ErrorCode.MANDATE_EXPIRED)
        if claims.nonce != checkout.nonce:
            raise ConsentError("the nonce was not issued for this checkout", ErrorCode.NONCE_UNKNOWN)
        if checkout.replayed:
            raise ConsentError("this mandate was accepted before", ErrorCode.MANDATE_REPLAYED)
        if checkout.ordered:
            raise ConsentError("the nonce was used already: this checkout is ordered", ErrorCode.NONCE_USED)
        if checkout.closed:
            raise ConsentError(f"checkout {proposal.checkout_id} was closed", ErrorCode.CHECKOUT_CLOSED)
        if (claims.amount_minor, claims.currency) != (proposal.total_minor, proposal.currency):
            raise ConsentError("the mandate's amount is not the proposal's", ErrorCode.AMOUNT_MISMATCH)
        if claims.payee != proposal.merchant.id:
            raise ConsentError("the mandate's payee is not the merchant of record", ErrorCode.PAYEE_MISMATCH)
        if claims.display_digest != checkout.digest(claims.modality):
            check_disclosed(proposal, claims.modality, claims.display_digest)
            raise ConsentError("the user was shown something else", ErrorCode.DISPLAY_MISMATCH)
        if (answer.decision, answer.modality, answer.display_digest) != (
            Decision.CONFIRM,
            claims.modality,
            claims.display_digest,
        ):
            raise ConsentError("the confirmation does not say what the mandate says", ErrorCode.MODALITY_MISMATCH)
        policy = self.policy.for_device(proposal.device_id)
        if claims.payment_handler != checkout.terms.payment_handler:
            policy.check_payment(claims.payment_handler)
            raise ConsentError("the mandate names another payment channel", ErrorCode.PAYMENT_CHANNEL_NOT_ALLOWED)
        self._check_limits(policy, proposal, checkout.spent_today, checkout.orders_last_minute)
        policy.check_modality(proposal, claims.modality)  # after the hard limits: no step-up to a refusal
        if claims.modality not in checkout.terms.modalities:
            raise ConsentError(f"{claims.modality} was not offered for this checkout", ErrorCode.STEP_UP_REQUIRED)
        check_confirmation(conn, signer, claims, now)  # the signer can give it; a PIN's proof, spent
        return checkout

    def _check_limits(self, policy: RiskPolicy, proposal: CheckoutProposal, spent: int, recent: int) -> None:
        """The limits no confirmation lifts: payment channel, categories, merchants, daily cap, velocity."""
        policy.check_payment(self.payment_handler)
        policy.check_proposal(proposal)
        policy.check_daily(proposal, spent)
        policy.check_velocity(recent)

    def _load(
        self, conn: Connection, checkout_id: str, opened: SignedMandate | None = None, now: float = 0.0
    ) -> StoredCheckout | None:
        """The checkout and, in the same read, everything its completion is checked against: the
        mandate's key, whether the mandate or the checkout was used, the device's recent orders."""
        kid, jti = (opened.kid, opened.claims.jti) if opened else (None, None)
        row = conn.execute(CHECKOUT_STATE, {"checkout": checkout_id, "kid": kid, "jti": jti, "day": now - 86400.0,
                                    "minute": now - 60.0}).fetchone()  # fmt: skip
        if row is None:
            return None
        raw, digest, nonce, terms, closed_at, ordered, replayed, spent, recent, handed_to, handed, paired, *key_row = (
            row
        )
        terms = handed or terms  # a hand-over changed the modalities, nothing else
        parsed = self._parsed.get(checkout_id)
        if parsed is None or parsed[0] != (raw, terms):  # opened elsewhere, before a restart, or rolled back
            proposal = decode(raw)
            assert isinstance(proposal, CheckoutProposal)
            parsed = ((raw, terms), proposal, ConsentTerms.model_validate_json(terms), {})
        key = KeyRecord.from_row(key_row) if key_row[0] is not None else None
        return StoredCheckout(parsed[1], digest, nonce, parsed[2], bool(ordered), closed_at is not None, parsed[3], key,
                         bool(replayed), spent, recent, handed_to, bool(paired))  # fmt: skip

    def _remember(self, raw: bytes, proposal: CheckoutProposal, terms: ConsentTerms, text: str) -> None:
        """Keep the parsed form of a proposal this verifier opened; it is used only while the stored
        bytes and terms are these (the database stays the truth), and dropped when the checkout is
        used or closed: what is kept is the open checkouts (oldest first past `PARSED_KEPT`), not
        every checkout ever opened (7.8 KB each: the gateway's RSS grew 23 MB a minute at 50 sessions/s)."""
        self._parsed[proposal.checkout_id] = ((raw, text), proposal, terms, {})
        while len(self._parsed) > PARSED_KEPT:
            del self._parsed[next(iter(self._parsed))]

    def _refuse(
        self,
        conn: Connection,
        key: str | None,
        body: str,
        ids: dict[str, str],
        exc: ConsentError,
        token: str | None = None,
    ) -> ConsentError:
        """Record the refusal (under the idempotency key, when it may hold one) and return it."""
        self.audit.append(
            conn,
            "refusal",
            stage="complete",
            code=exc.code.value,
            reason=exc.text,
            mandate_id=mandate_id(token) if token else None,
            mandate_sha256=sha256_hex(token) if token else None,
            **ids,
        )
        if key is not None:
            consent_store.record_refusal(conn, key, body, ids, exc, self.clock())
        return exc

    # reading -----------------------------------------------------------------------------

    def orders(self) -> list[tuple[str, str, int, str]]:
        """(order id, checkout id, total, currency) of every order, oldest first."""
        with self.db.reading() as conn:
            return conn.execute(
                "SELECT order_id, checkout_id, total_minor, currency FROM completions WHERE order_id IS NOT NULL"
                " ORDER BY at"
            ).fetchall()


def _body_sha256(completion: Completion) -> str:
    fields = [
        completion.checkout_id,
        completion.checkout_hash,
        completion.device_id,
        completion.session_id,
        completion.confirmation.encode().decode(),
    ]
    return sha256_hex(json.dumps(fields, separators=(",", ":")))
