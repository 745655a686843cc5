"""An offer handed to the phone paired with its device at provisioning, as the verifier records it:
from then on only that phone's key signs for it, by its sheet (`phone_sheet`), under the same nonce."""

from __future__ import annotations

from device_sdk.protocol.errors import ConsentError, ErrorCode
from device_sdk.protocol.fields import Modality
from device_sdk.protocol.messages import ConsentTerms

from .audit import AuditLog
from .registry import paired_phone
from .sql import Connection


def hand_over(
    conn: Connection, audit: AuditLog, checkout_id: str, device_id: str, now: float
) -> tuple[str, ConsentTerms] | ConsentError:
    """In the verifier's transaction: the phone the open offer of `device_id` goes to, and the terms
    its mandate must meet; or the refusal (`not_paired` for a device with no live pairing), recorded
    in the audit log like the hand-over itself. Asking again gives the same answer."""
    row = conn.execute(
        "SELECT c.device_id, c.session_id, c.terms, c.closed_at,"
        " EXISTS (SELECT 1 FROM completions o WHERE o.ordered_checkout = c.checkout_id)"
        " FROM checkouts c WHERE c.checkout_id = ?",
        (checkout_id,),
    ).fetchone()
    if row is None or row[0] != device_id:
        return ConsentError(f"{device_id} has no checkout {checkout_id}", ErrorCode.UNKNOWN_CHECKOUT)
    owner, session_id, terms_text, closed_at, ordered = row
    ids = {"device_id": owner, "session_id": session_id, "checkout_id": checkout_id}
    phone = paired_phone(conn, owner)
    earlier = conn.execute("SELECT to_device, terms FROM handovers WHERE checkout_id = ?", (checkout_id,)).fetchone()

    def refuse(text: str, code: ErrorCode) -> ConsentError:
        audit.append(conn, "refusal", stage="handover", code=code.value, reason=text, **ids)
        return ConsentError(text, code)

    if closed_at is not None or ordered:
        return refuse(f"checkout {checkout_id} was closed", ErrorCode.CHECKOUT_CLOSED)
    if phone is None:
        return refuse(f"{owner} is paired with no phone", ErrorCode.NOT_PAIRED)
    if earlier is not None and earlier[0] != phone:
        return refuse(f"the offer was handed to {earlier[0]}, no longer paired", ErrorCode.NOT_PAIRED)
    if earlier is not None:
        return phone, ConsentTerms.model_validate_json(earlier[1])
    terms = ConsentTerms.model_validate_json(terms_text).model_copy(update={"modalities": [Modality.PHONE_SHEET]})
    conn.execute(
        "INSERT INTO handovers (checkout_id, to_device, terms, at) VALUES (?, ?, ?, ?)",
        (checkout_id, phone, terms.model_dump_json(), now),
    )
    audit.append(conn, "handover", to_device=phone, modalities=[Modality.PHONE_SHEET.value], **ids)
    return phone, terms
