"""The hardware partners' revenue report: orders and value per partner, model and currency, from the
audit log, with the commission each owes under its terms.

The log is verified first and a broken one gives no report (`StoreError`, `audit_broken`): the
figures come only from records the signed chain covers. Each `order` record names the partner and
model the device was provisioned as (`partners`); an order of a device provisioned with none is
`unattributed`. The terms live in a TOML file:

    [partners.demo-partner]
    commission_bps = 500          # 5.00 % of the gross value, in basis points (0 to 10000)
    waived_until = 2027-01-01     # orders placed before this UTC date owe no commission (reported as waived)

Everything is integer minor units: a row's commission is its gross value (of the orders not waived)
times the basis points, divided by 10000 and rounded half up, in integer arithmetic; its waived
commission the same over the waived orders. A partner with no terms owes nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_sdk.protocol.errors import ConfigError, ErrorCode, StoreError
from device_sdk.protocol.wire_errors import first_error

from .audit import verified_records
from .store_url import StoreUrl

UNATTRIBUTED = "unattributed"
"""The partner and model of an order whose device was provisioned with no partner."""
BASIS = 10_000


class PartnerTerms(BaseModel):
    """One partner's terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    commission_bps: Annotated[int, Field(ge=0, le=BASIS, strict=True)] = 0
    waived_until: dt.date | None = None
    """Orders placed before 00:00 UTC of this day owe no commission."""

    def waived(self, at: float) -> bool:
        if self.waived_until is None:
            return False
        start = dt.datetime.combine(self.waived_until, dt.time(), tzinfo=dt.UTC)
        return at < start.timestamp()


class PartnerTermsBook(BaseModel):
    """Every partner's terms, from a TOML file's `[partners.<id>]` tables."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partners: dict[str, PartnerTerms] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None) -> PartnerTermsBook:
        """The terms in `path` (None: no terms), or `ConfigError` naming what is wrong."""
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read the partner terms {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not TOML: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{path}: {first_error(exc)}") from None


@dataclass
class Row:
    partner: str
    model: str
    currency: str
    orders: int = 0
    gross_minor: int = 0
    commission_minor: int = 0
    waived_minor: int = 0


def commission(gross_minor: int, bps: int) -> int:
    """`gross_minor` * `bps` / 10000, rounded half up, in integers."""
    return (gross_minor * bps + BASIS // 2) // BASIS


def partner_report(
    path: str | Path | StoreUrl, terms: PartnerTermsBook | None = None, *, since: dt.datetime | None = None
) -> list[Row]:
    """The report over the audit log at `path`, a SQLite file or a PostgreSQL URL (orders placed at or
    after `since`, if given), one row per partner, model and currency, sorted; `StoreError(audit_broken)`
    if the log is not intact."""
    report, orders = verified_records(path, "order")
    if not report.ok:
        raise StoreError(
            f"the audit log {path} is broken at record {report.first_bad} ({report.problem}): no report from it",
            ErrorCode.AUDIT_BROKEN,
        )
    terms = terms or PartnerTermsBook()
    floor = since.timestamp() if since is not None else None
    due: dict[tuple[str, str, str], list[int]] = {}  # key -> [orders, gross, gross due, gross waived]
    for order in orders:
        at, total, currency = order.get("at"), order.get("total_minor"), order.get("currency")
        if not isinstance(total, int) or isinstance(total, bool) or not isinstance(currency, str):
            raise StoreError(f"order record {order['seq']} has no integer total_minor and currency",
                             ErrorCode.AUDIT_BROKEN)  # fmt: skip
        if floor is not None and (not isinstance(at, int | float) or at < floor):
            continue
        partner = str(order.get("partner", UNATTRIBUTED))
        key = (partner, str(order.get("model", UNATTRIBUTED)), currency)
        sums = due.setdefault(key, [0, 0, 0, 0])
        sums[0] += 1
        sums[1] += total
        own = terms.partners.get(partner)
        free = own is not None and isinstance(at, int | float) and own.waived(at)
        sums[3 if free else 2] += total
    rows = []
    for (partner, model, currency), (count, gross, owed, waived) in sorted(due.items()):
        bps = terms.partners[partner].commission_bps if partner in terms.partners else 0
        rows.append(Row(partner, model, currency, count, gross, commission(owed, bps), commission(waived, bps)))
    return rows


def parse_since(text: str) -> dt.datetime:
    """`--since`: a date (`2026-12-01`, from 00:00 UTC) or an ISO 8601 time (UTC if it names no zone)."""
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def as_json(rows: list[Row]) -> dict[str, Any]:
    return {"rows": [asdict(row) for row in rows]}


def as_csv(rows: list[Row]) -> str:
    out = io.StringIO()
    fields = ["partner", "model", "currency", "orders", "gross_minor", "commission_minor", "waived_minor"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(asdict(row))
    return out.getvalue()


def unpriced(rows: list[Row], terms: PartnerTermsBook) -> list[str]:
    """The partners in the report that have no terms (they owe nothing here)."""
    return sorted({row.partner for row in rows if row.partner not in terms.partners and row.partner != UNATTRIBUTED})
