"""Sponsored lines at the checkout: the disclosure bound to consent, audited, and counted per sponsor.

A line whose placement was paid for carries `sponsored.by`; the SDK composes its disclosure
("Sponsored", zh-CN "广告") into the read-back, lens card and phone sheet, before the item, so the
display digest a mandate signs covers it. `check_disclosed` tells a mandate signed over the same
rendering without the label from any other wrong digest (`sponsored_not_disclosed`);
`record_disclosures` writes one `disclosure` audit record per sponsored line of an offer issued
with its label; `sponsor_report` counts those impressions and the orders per sponsor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_sdk.consent.readback import presentation_digest
from device_sdk.protocol.errors import ConsentError, ErrorCode, StoreError
from device_sdk.protocol.fields import Modality
from device_sdk.protocol.messages import CheckoutProposal

from .audit import AuditLog, verified_records
from .sql import Connection
from .store_url import StoreUrl


def sponsors(proposal: CheckoutProposal) -> list[str]:
    """The sponsors of a proposal's lines, each once, in line order."""
    return list(dict.fromkeys(line.sponsored.by for line in proposal.lines if line.sponsored))


def sponsored_by(proposal: CheckoutProposal) -> dict[str, Any]:
    """The `sponsors` field of an order record (none for an order with no sponsored line)."""
    found = sponsors(proposal)
    return {"sponsors": found} if found else {}


def unlabelled(proposal: CheckoutProposal) -> CheckoutProposal:
    """The same proposal with every sponsored label dropped: what a rendering without it shows."""
    lines = [line.model_copy(update={"sponsored": None}) for line in proposal.lines]
    return proposal.model_copy(update={"lines": lines})


def check_disclosed(proposal: CheckoutProposal, modality: Modality, digest: str) -> None:
    """Called on a display digest that does not match: `sponsored_not_disclosed` if it is that of the
    rendering without the sponsored labels (the device showed the item without its disclosure)."""
    if sponsors(proposal) and digest == presentation_digest(unlabelled(proposal), modality):
        raise ConsentError(
            f"the user was not shown that {', '.join(sponsors(proposal))} paid for an item: no consent to it",
            ErrorCode.SPONSORED_NOT_DISCLOSED,
        )


def record_disclosures(audit: AuditLog, conn: Connection, proposal: CheckoutProposal, ids: dict[str, str]) -> None:
    """One `disclosure` record per sponsored line of an offer issued with its label."""
    for line in proposal.lines:
        if line.sponsored:
            audit.append(conn, "disclosure", sponsor=line.sponsored.by, sku=line.sku,
                         locale=proposal.language, **ids)  # fmt: skip


@dataclass(frozen=True)
class SponsorRow:
    """One sponsor's impressions (offers disclosed) and orders of an offer it sponsored."""

    sponsor: str
    impressions: int
    orders: int


def sponsor_report(path: str | Path | StoreUrl) -> list[SponsorRow]:
    """Impressions and orders per sponsor from the verified audit log at `path`, sorted by sponsor;
    `StoreError(audit_broken)` if the log is not intact."""
    counts: dict[str, list[int]] = {}
    for index, kind in enumerate(("disclosure", "order")):
        report, records = verified_records(path, kind)
        if not report.ok:
            raise StoreError(
                f"the audit log {path} is broken at record {report.first_bad} ({report.problem}): no report from it",
                ErrorCode.AUDIT_BROKEN,
            )
        for record in records:
            for sponsor in _sponsors_of(record, kind):
                counts.setdefault(sponsor, [0, 0])[index] += 1
    return [SponsorRow(sponsor, shown, ordered) for sponsor, (shown, ordered) in sorted(counts.items())]


def _sponsors_of(record: dict[str, Any], kind: str) -> list[str]:
    if kind == "disclosure":
        return [str(record.get("sponsor"))]
    found = record.get("sponsors") or []
    return [str(sponsor) for sponsor in found] if isinstance(found, list) else []
