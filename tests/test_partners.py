"""Revenue attribution: each order's audit record names the partner and model its device was
provisioned as, and `device-sdk report partners` sums them per partner, model and currency, with
integer commission (rounded half up), waived commission, and no report from a tampered log."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import pytest

from device_sdk.cli import main
from device_sdk.platform.checkout.audit import AuditLog, trail
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.partner_report import (
    PartnerTermsBook,
    Row,
    as_csv,
    commission,
    partner_report,
)
from device_sdk.platform.checkout.registry import DeviceRegistry
from device_sdk.protocol.errors import ConfigError, ErrorCode, StoreError
from simulators.scenario import run_demo
from tests.test_audit import tamper

FIELDS = ["partner", "model", "currency", "orders", "gross_minor", "commission_minor", "waived_minor"]


def orders_log(path: str | Path, orders: list[tuple[str | None, str | None, int, str]]) -> str | Path:
    """A real audit log (hash chain, signed checkpoints) holding these orders (partner, model, total, currency)."""
    with Database(path) as db:
        audit = AuditLog.open(db)
        for n, (partner, model, total, currency) in enumerate(orders):
            credit = {"partner": partner, "model": model} if partner else {}
            db.call(lambda conn, n=n, total=total, currency=currency, credit=credit: audit.append(
                conn, "order", device_id=f"dev-{n}", session_id=f"ses-{n}", checkout_id=f"co-{n}",
                order_id=f"ord-{n}", total_minor=total, currency=currency, **credit,
            ))  # fmt: skip
    return path


def terms(tmp_path: Path, text: str) -> PartnerTermsBook:
    file = tmp_path / "terms.toml"
    file.write_text(text, encoding="utf-8")
    return PartnerTermsBook.load(file)


def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    return code, out.getvalue()


async def test_the_demo_order_is_credited_to_the_partner_the_speaker_was_provisioned_as(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    result = await run_demo(audit=db, timeout=30)
    assert result.ordered and result.run.offer is not None
    records = trail(db, result.run.offer.session_id)
    order = next(r for r in records if r["kind"] == "order")
    assert (order["partner"], order["model"], order["device_id"]) == ("demo-partner", "demo-speaker", "speaker-1")
    file = tmp_path / "terms.toml"
    file.write_text("[partners.demo-partner]\ncommission_bps = 250\n", encoding="utf-8")
    code, out = cli("report", "partners", "--audit", str(db), "--terms", str(file), "--json")
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [list(row) for row in rows] == [FIELDS]
    assert rows == [{"partner": "demo-partner", "model": "demo-speaker", "currency": order["currency"], "orders": 1,
                     "gross_minor": order["total_minor"], "commission_minor": commission(order["total_minor"], 250),
                     "waived_minor": 0}]  # fmt: skip


def test_provisioning_records_the_partner_and_a_device_with_none_is_unattributed(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    code, _ = cli("keys", "create", "speaker-9", "--out", str(tmp_path / "k.pem"), "--audit", str(db),
                  "--partner", "acme", "--model", "acme-one")  # fmt: skip
    assert code == 0
    with Database(db) as opened:
        assert DeviceRegistry(opened).partner("speaker-9") == ("acme", "acme-one")
        assert DeviceRegistry(opened).partner("speaker-10") is None
    with pytest.raises(ConfigError, match="go together"):
        cli("keys", "create", "speaker-11", "--out", str(tmp_path / "k2.pem"), "--audit", str(db), "--partner", "x")
    with pytest.raises(Exception, match="partner"):
        cli("keys", "create", "speaker-12", "--out", str(tmp_path / "k3.pem"), "--audit", str(db),
            "--partner", "no/slash", "--model", "m")  # fmt: skip
    log = orders_log(tmp_path / "log.db", [(None, None, 500, "CNY")])
    assert partner_report(log) == [Row("unattributed", "unattributed", "CNY", 1, 500, 0, 0)]


def test_commission_is_integer_minor_units_rounded_half_up_per_row(tmp_path: Path, store: str | Path) -> None:
    assert commission(50, 100) == 1  # 0.5 rounds up
    assert commission(49, 100) == 0  # 0.49 rounds down
    assert commission(1999, 333) == 67  # 66.5667
    assert commission(10**15, 10_000) == 10**15  # no float ever: exact at any size
    log = orders_log(store, [  # on SQLite and on PostgreSQL
        ("acme", "one", 1999, "CNY"), ("acme", "one", 1, "CNY"), ("acme", "two", 333, "CNY"),
        ("acme", "one", 700, "USD"), ("zeta", "z", 10**15 + 1, "CNY"),
    ])  # fmt: skip
    book = terms(tmp_path, "[partners.acme]\ncommission_bps = 333\n[partners.zeta]\ncommission_bps = 1\n")
    rows = partner_report(log, book)
    assert rows == [
        Row("acme", "one", "CNY", 2, 2000, 67, 0),  # 2000 * 3.33 % = 66.6: one rounding per row
        Row("acme", "one", "USD", 1, 700, 23, 0),  # 23.31
        Row("acme", "two", "CNY", 1, 333, 11, 0),  # 11.0889
        Row("zeta", "z", "CNY", 1, 10**15 + 1, 10**11, 0),  # 100000000000.0001
    ]
    for row in rows:
        assert all(type(getattr(row, f)) is int for f in FIELDS[3:])
    assert as_csv(rows).splitlines()[0] == ",".join(FIELDS)
    assert as_csv(rows).splitlines()[1] == "acme,one,CNY,2,2000,67,0"


def test_a_waiver_reports_the_commission_as_waived_until_its_date(tmp_path: Path) -> None:
    log = orders_log(tmp_path / "log.db", [("early", "e1", 10_000, "CNY"), ("late", "l1", 10_000, "CNY")])
    today = dt.datetime.now(dt.UTC).date()
    tomorrow, yesterday = today + dt.timedelta(days=1), today - dt.timedelta(days=1)
    book = terms(tmp_path, f"[partners.early]\ncommission_bps = 500\nwaived_until = {tomorrow}\n"
                           f"[partners.late]\ncommission_bps = 500\nwaived_until = {yesterday}\n")  # fmt: skip
    assert partner_report(log, book) == [
        Row("early", "e1", "CNY", 1, 10_000, 0, 500),  # placed before its waiver ends: owes nothing
        Row("late", "l1", "CNY", 1, 10_000, 500, 0),  # its waiver ended yesterday: owes 5 %
    ]
    since = dt.datetime.combine(tomorrow, dt.time(), tzinfo=dt.UTC)
    assert partner_report(log, book, since=since) == []
    with pytest.raises(ConfigError, match="commission_bps"):
        terms(tmp_path, "[partners.early]\ncommission_bps = 10001\n")
    with pytest.raises(ConfigError, match="commission_bps"):
        terms(tmp_path, "[partners.early]\ncommission_bps = 2.5\n")  # basis points are whole


def test_a_tampered_log_gives_no_report(tmp_path: Path, store: str | Path) -> None:
    log = orders_log(store, [("acme", "one", 1000, "CNY"), ("acme", "one", 2000, "CNY")])
    book = terms(tmp_path, "[partners.acme]\ncommission_bps = 1000\n")
    assert partner_report(log, book)[0].gross_minor == 3000
    with tamper(log) as conn:  # as someone with write access to the database
        body: Any = conn.execute("SELECT body FROM audit WHERE seq = 2").fetchone()[0]
        conn.execute(
            "UPDATE audit SET body = ? WHERE seq = 2", (body.replace('"total_minor":2000', '"total_minor":1'),)
        )
    with pytest.raises(StoreError) as refused:
        partner_report(log, book)
    assert refused.value.code is ErrorCode.AUDIT_BROKEN
    assert "record 2" in refused.value.text
    with pytest.raises(StoreError):
        cli("report", "partners", *(["--database", log] if isinstance(log, str) else ["--audit", str(log)]), "--json")
