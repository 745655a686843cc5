"""The platform side's commands: device keys, provisioning, the audit log and the consent bench."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict
from pathlib import Path

from device_sdk.commands import Commands
from device_sdk.consent.keys import PublicKey, SigningKey
from device_sdk.protocol.errors import KeyStoreError
from device_sdk.protocol.fields import Capability, DeviceKind
from device_sdk.protocol.topics import check_id
from device_sdk.state import default_database, default_key_file
from device_sdk.terminal import printable

from .checkout.audit import describe, trail, verify_log
from .checkout.bench import run_bench_consent
from .checkout.database import Database
from .checkout.disclosure import sponsor_report
from .checkout.partner_report import PartnerTermsBook, as_csv, as_json, parse_since, partner_report, unpriced
from .checkout.partners import given_partner
from .checkout.profiles import DeviceProfile
from .checkout.registry import DeviceRegistry
from .checkout.store_url import PASSWORD_ENV, PASSWORD_FILE_OPTION, StoreUrl, parse_store, store_argument
from .provisioning.provision import run_provision


def register(commands: Commands) -> None:
    keys = commands.group("keys", "device signing keys and the registry the verifier trusts")
    create = keys.add(
        "create", "make a device's key file and register it; an old key keeps verifying mandates issued before "
        "for 15 minutes (after a compromise, revoke first)", run=_keys,
    )  # fmt: skip
    create.add_argument("device_id")
    create.add_argument("--out", type=Path, default=None, help="key file to write (default: the state directory)")
    create.add_argument("--kind", choices=[k.value for k in DeviceKind], default=None,
                        help="what the device is (default: as recorded, else speaker); see provision")  # fmt: skip
    revoke = keys.add("revoke", "revoke every key of a device", run=_keys)
    revoke.add_argument("device_id")
    listing = keys.add("list", "registered keys", run=_keys)
    listing.add_argument("--json", action="store_true")
    partner_options(create)
    for sub in (create, revoke, listing):
        store_options(sub, policy=False, url=True)

    provision = commands.add(
        "provision", "broker credentials (and, for a device, its signing key) for one client; "
        "writes the Mosquitto password file, ACL and configuration (docs/security.md)", run=run_provision,
    )  # fmt: skip
    provision.add_argument("name", metavar="DEVICE_ID", help="the client's id: its broker user name")
    provision.add_argument("--role", choices=["device", "gateway", "agent", "oem", "monitor"],
                           default="device", help="what it may read and write (default: device)")  # fmt: skip
    provision.add_argument("--dir", type=Path, default=None, help="broker directory (default: <state>/broker)")
    provision.add_argument("--database", "--db", dest="database", type=store_argument, default=None,
                           help=f"the verifier's SQLite file or postgresql://USER@HOST:PORT/DBNAME "
                           f"(default: {default_database()})")  # fmt: skip
    provision.add_argument(PASSWORD_FILE_OPTION, dest="database_password_file", type=Path, default=None,
                           metavar="FILE", help="a PostgreSQL password: first line of FILE")  # fmt: skip
    provision.add_argument("--key-out", type=Path, default=None, help="a device's key file (default: state dir)")
    provision.add_argument("--rotate", action="store_true", help="new password (and key) for a provisioned one")
    provision.add_argument("--revoke", action="store_true", help="remove the user; revoke a device's keys")
    provision.add_argument("--phone", default=None, metavar="PHONE_ID",
                           help="pair the device with this phone (provisioned first): its sheet confirms what the "
                           "device hands over when its voice cannot hear the answer")  # fmt: skip
    provision.add_argument("--kind", choices=[k.value for k in DeviceKind], default=None,
                           help="what the device is (default: as provisioned before, else speaker): "
                           "the modalities it may confirm by follow from it")  # fmt: skip
    provision.add_argument("--capabilities", default=None, metavar="CAP,...",
                           help=f"what it has, of {','.join(Capability)} (default: the kind's)")  # fmt: skip
    provision.add_argument("--pin-file", type=Path, default=None, metavar="FILE",
                           help="the user's step-up PIN (4 to 12 digits) in FILE, or - for stdin; kept only "
                           "as a salted scrypt hash (never give a PIN on the command line)")  # fmt: skip
    provision.add_argument("--edge-policy", type=Path, default=None, metavar="FILE",
                           help="the device's own limits (TOML or JSON, docs/edge-policy.md), checked and "
                           "copied beside its credentials")  # fmt: skip
    provision.add_argument("--host", default=None, help="name clients connect to (kept; default localhost)")
    provision.add_argument("--tls-port", type=int, default=None, help="TLS listener port (kept; default 8883)")
    provision.add_argument("--plain-port", type=int, default=None, help="also a loopback listener without TLS")
    provision.add_argument("--tls-files", nargs=3, metavar=("CA", "CERT", "KEY"), default=None,
                           help="your own CA and server certificate instead of the test CA")  # fmt: skip
    partner_options(provision)
    provision.add_argument("--json", action="store_true", help="one JSON object (no password in it)")

    gateway = commands.add(
        "gateway", "the gateway as a long-running service: config from a TOML file and the environment, JSON "
        "logs, /healthz /readyz /metrics, a drained shutdown on SIGTERM (docs/scale.md)", run=_gateway,
    )  # fmt: skip
    gateway.add_argument(
        "--config", type=Path, default=None, metavar="FILE",
        help="TOML configuration (examples/gateway.toml); $DEVICE_SDK_* variables override it",
    )  # fmt: skip

    audit = commands.group("audit", "check or read the audit log")
    verify = audit.add("verify", "exit 0 if the log is intact, else name the first bad record", run=_audit_verify)
    verify.add_argument("path", nargs="?", type=store_argument, default=None,
                        help=f"a SQLite file or postgresql://USER@HOST/DB (default: {default_database()})")  # fmt: skip
    verify.add_argument("--key", default=None, help="pin the checkpoint key: base64url, JWK or PEM, or @FILE")
    verify.add_argument("--head", default=None, help="a checkpoint hash (hex) kept elsewhere that must still be there")
    verify.add_argument("--json", action="store_true")
    show = audit.add("show", "the trail of one session", run=_audit_show)
    show.add_argument("path", nargs="?", type=store_argument, default=None,
                      help=f"a SQLite file or postgresql://USER@HOST/DB (default: {default_database()})")  # fmt: skip
    for sub in (verify, show):
        sub.add_argument(PASSWORD_FILE_OPTION, dest="database_password_file", type=Path, default=None,
                         metavar="FILE", help="a PostgreSQL password: first line of FILE")  # fmt: skip
    show.add_argument("--session", required=True, help="session id")
    show.add_argument("--json", action="store_true")

    report = commands.group("report", "reports from the audit log")
    partners = report.add(
        "partners",
        "orders, value and commission per hardware partner, model and currency, "
        "from the audit log (verified first: a broken log gives no report)",
        run=_report_partners,
    )
    partners.add_argument("--since", default=None, metavar="DATE", help="orders from this UTC date (or ISO time) on")
    partners.add_argument(
        "--terms",
        type=Path,
        default=None,
        metavar="FILE",
        help="the partners' terms (TOML: commission_bps, waived_until; docs/partners.md)",
    )
    shape = partners.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help='{"rows": [...]} (integer minor units)')
    shape.add_argument("--csv", action="store_true", help="CSV with a header row")
    partners.add_argument("--sponsors", action="store_true", help="impressions and orders per sponsor instead")
    store_options(partners, policy=False, url=True)

    bench = commands.group("bench", "benchmarks (figures as JSON with --json)")
    consent = bench.add("consent", "mandates verified and completed; audit log verification", run=run_bench_consent)
    consent.add_argument("-n", type=int, default=5000, help="checkouts to sign, verify and complete")
    consent.add_argument("--threads", type=int, default=2, help="threads that verify and submit (default 2)")
    consent.add_argument("--devices", type=int, default=100, help="devices the checkouts are spread over")
    consent.add_argument("--clients", type=int, default=64, help="concurrent callers of complete() (default 64)")
    consent.add_argument("--audit-records", default="100000,1000000", help="audit log sizes to verify")
    consent.add_argument("--dir", default=None, help="where to put the temporary databases")
    consent.add_argument("--json", action="store_true")


def store_options(
    command: argparse.ArgumentParser, *, policy: bool = True, default: Path | None = None, url: bool = False
) -> None:
    """Where the checkout keeps its state (`demo`, `serve`, `keys`; `default` names the command's own
    default in the help, else `default_database()`), and its risk policy; with `url`, also
    `--database URL` (PostgreSQL) and its password file (`store_target` reads them back)."""
    command.add_argument(
        "--audit", "--db", dest="database", type=Path, default=None,
        help=f"SQLite file of the audit log, device keys and verifier store (default: {default or default_database()})",
    )  # fmt: skip
    if url:
        command.add_argument(
            "--database", dest="database_url", type=store_argument, default=None, metavar="URL",
            help="the stores in a database instead: postgresql://USER@HOST:PORT/DBNAME or sqlite:///PATH "
            "(docs/scale.md); never a password in the URL",
        )  # fmt: skip
        command.add_argument(
            PASSWORD_FILE_OPTION, dest="database_password_file", type=Path, default=None, metavar="FILE",
            help=f"the PostgreSQL user's password: the first line of FILE (default: ${PASSWORD_ENV})",
        )  # fmt: skip
    if policy:
        command.add_argument(
            "--policy", type=Path, default=None, help="risk policy TOML file (default: built-in defaults)"
        )


def partner_options(command: argparse.ArgumentParser) -> None:
    """`--partner P --model M`: the hardware partner and device model a device's orders are credited to."""
    command.add_argument("--partner", default=None, help="the hardware partner the device came from (with --model)")
    command.add_argument("--model", default=None, help="its device model: orders are reported per partner and model")


def _report_partners(args: argparse.Namespace) -> int:
    if args.sponsors:
        return _report_sponsors(args)
    terms = PartnerTermsBook.load(args.terms)
    since = parse_since(args.since) if args.since else None
    rows = partner_report(store_target(args) or default_database(), terms, since=since)
    if args.json:
        print(json.dumps(as_json(rows)))
    elif args.csv:
        sys.stdout.write(as_csv(rows))
    else:
        print(f"{'partner':<20} {'model':<20} {'cur':<4} {'orders':>7} {'gross':>14} {'commission':>12} {'waived':>12}")
        for r in rows:
            print(printable(f"{r.partner:<20} {r.model:<20} {r.currency:<4} {r.orders:>7} {r.gross_minor:>14} "
                            f"{r.commission_minor:>12} {r.waived_minor:>12}"))  # fmt: skip
    for partner in unpriced(rows, terms):
        print(printable(f"warning: no terms for {partner}: no commission counted"), file=sys.stderr)
    return 0


def _report_sponsors(args: argparse.Namespace) -> int:
    rows = sponsor_report(store_target(args) or default_database())
    if args.json:
        print(json.dumps({"sponsors": [asdict(row) for row in rows]}))
    elif args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows([("sponsor", "impressions", "orders"), *((r.sponsor, r.impressions, r.orders) for r in rows)])
    else:
        print(f"{'sponsor':<24} {'impressions':>12} {'orders':>8}")
        for r in rows:
            print(printable(f"{r.sponsor:<24} {r.impressions:>12} {r.orders:>8}"))
    return 0


def store_target(args: argparse.Namespace) -> StoreUrl | Path | None:
    """The store `--database URL` names (with its password file), else `--db PATH`, else None."""
    if getattr(args, "database_url", None):
        return parse_store(args.database_url, args.database_password_file)
    database: Path | None = args.database
    return database


def _keys(args: argparse.Namespace) -> int:
    with Database(store_target(args) or default_database()) as db:
        registry = DeviceRegistry(db)
        if args.command_keys == "create":
            device_id = check_id(args.device_id, "device id")
            out = args.out or default_key_file(device_id)
            partner = given_partner(args.partner, args.model)
            key = SigningKey.generate()
            key.save(out)
            try:
                kid = registry.rotate(device_id, key.public)
                if args.kind is not None or registry.profile(device_id) is None:
                    registry.describe(device_id, DeviceProfile.of(args.kind or DeviceKind.SPEAKER))
                if partner is not None:
                    registry.attribute(device_id, *partner)
            except BaseException:
                out.unlink()  # not registered: leave no key file behind
                raise
            print(f"{args.device_id}: key {kid} written to {out} (mode 600) and registered in {db.url}")
        elif args.command_keys == "revoke":
            count = registry.revoke(args.device_id)
            print(f"{args.device_id}: {count} key(s) revoked")
            return 0 if count else 1
        else:
            records = registry.records()
            rows = [{"device_id": r.device_id, "kid": r.kid, "status": r.status.value, "added_at": r.added_at,
                     "retired_at": r.retired_at} for r in records]  # fmt: skip
            if args.json:
                print(json.dumps(rows))
            for row in [] if args.json else rows:
                print(printable(f"{row['device_id']:<24} {row['kid']}  {row['status']}"))
    return 0


async def _gateway(args: argparse.Namespace) -> int:
    from .daemon.config import GatewayConfig
    from .daemon.logs import log_json
    from .daemon.run import run_gateway

    config = GatewayConfig.load(args.config)
    if config.log_json:
        log_json(config.log_level)
    return await run_gateway(config)


def _audit_show(args: argparse.Namespace) -> int:
    path = parse_store(args.path or default_database(), args.database_password_file)
    records = trail(path, args.session)
    if args.json:
        print(json.dumps(records, ensure_ascii=False))
    for record in [] if args.json else records:
        print(describe(record))
    if not records:
        print(printable(f"no records of session {args.session} in {path}"), file=sys.stderr)
    return 0 if records else 1


def _audit_verify(args: argparse.Namespace) -> int:
    path = parse_store(args.path or default_database(), args.database_password_file)
    key = None
    if args.key:
        try:
            text = Path(args.key[1:]).read_text() if args.key.startswith("@") else args.key
        except OSError as exc:
            raise KeyStoreError(f"cannot read {args.key[1:]}: {exc.strerror}") from None
        key = PublicKey.from_text(text)
    report = verify_log(path, key=key, head=args.head)
    if args.json:
        print(json.dumps(report.as_dict()))
    elif report.ok:
        pinned = "the pinned key" if report.key_pinned else "the key recorded in the log"
        print(f"{path}: intact, {report.records} records, {report.checkpoints} checkpoints")
        print(f"head {report.head}, signed by {report.key_id} ({pinned})")
    else:
        print(printable(f"{path}: BROKEN at record {report.first_bad}: {report.problem}"))
    if not report.key_pinned:
        print("warning: no key pinned (no key file beside the log, no --key): a log rewritten and re-signed "
              "with another key would pass", file=sys.stderr)  # fmt: skip
    return 0 if report.ok else 1
