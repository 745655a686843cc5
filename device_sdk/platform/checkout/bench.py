"""`device-sdk bench consent`: signed mandates verified and completed on the durable store, and the
audit log verified at 100,000 and 1,000,000 records.

- `verifications_per_s`: mandates read and signature-checked against the registered key
  (`ConsentVerifier`'s parallel part), on `--threads` threads.
- `completions_per_s`: whole completions: every check, the single-use store, the order, the
  idempotency record and two audit records, each on disk (SQLite `synchronous=FULL`, group commit)
  before it returns, submitted by `--clients` concurrent callers (as a checkout service's request
  handlers would).
- `audit_verify_s`: `verify_log` over a log of that many records (about 300 bytes each).
Proposals are opened and mandates signed before the clock starts: that is the devices' work. The
checkouts are spread over `--devices` devices, each with its own key (the daily cap and velocity
checks read that device's orders of the last 24 hours).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import mandate_for
from device_sdk.consent.readback import confirmation_request
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, new_id
from device_sdk.protocol.messages import CheckoutProposal, ConfirmationResult, IssuedProposal, Merchant, ProposalLine

from .audit import AuditLog, verify_log
from .backend import Completion
from .database import Database
from .policy import PolicyBook
from .profiles import DeviceProfile
from .verifier import ConsentVerifier

SELLER = Merchant(id="m-bench", name="Bench Goods")
UNLIMITED = PolicyBook({"orders_per_minute": 10**9, "daily_cap_minor": {"CNY": 10**15}})


def _proposal(device_id: str) -> IssuedProposal:
    line = ProposalLine(sku="bat-aa-4", name="AA batteries, pack of 4", qty=2, unit="pack", unit_price_minor=1290,
                        line_total_minor=2580, seller=SELLER, category="household")  # fmt: skip
    proposal = CheckoutProposal(
        checkout_id=new_id("co"), request_id=new_id("ar"), device_id=device_id, session_id=new_id("ses"),
        merchant=SELLER, currency="CNY", lines=[line], total_minor=2580, created_at=time.time(),
    )  # fmt: skip
    return IssuedProposal(proposal, proposal.encode())


def _prepare(verifier: ConsentVerifier, keys: list[SigningKey], n: int, threads: int) -> list[Completion]:
    """Open `n` checkouts spread over the devices and sign a mandate for each, as the devices would."""
    by_device = {f"bench-{i}": key for i, key in enumerate(keys)}
    issued = [_proposal(f"bench-{i % len(keys)}") for i in range(n)]
    with ThreadPoolExecutor(threads * 4) as pool:
        terms = list(pool.map(verifier.open, issued))
    completions = []
    for one, consent in zip(issued, terms, strict=True):
        offer = confirmation_request(one.proposal, one.checkout_hash, "req_bench", consent, time.time() + 300)
        device_id = one.proposal.device_id
        token = mandate_for(offer, by_device[device_id], device_id=device_id, modality=Modality.VOICE,
                            display_digest=offer.display_digest)  # fmt: skip
        answer = ConfirmationResult(
            session_id=offer.session_id, checkout_id=offer.checkout_id, checkout_hash=offer.checkout_hash,
            decision=Decision.CONFIRM, modality=Modality.VOICE, display_digest=offer.display_digest, mandate=token,
        )  # fmt: skip
        completions.append(Completion(offer.checkout_id, offer.checkout_hash, device_id, offer.session_id, answer))
    return completions


def measure_completions(n: int, threads: int, clients: int, devices: int, directory: Path) -> dict[str, float]:
    with Database(directory / "consent.db") as db:
        audit = AuditLog.open(db)
        verifier = ConsentVerifier(db, audit, audience="bench", policy=UNLIMITED)
        keys = [SigningKey.generate() for _ in range(devices)]
        for i, key in enumerate(keys):
            verifier.registry.register(f"bench-{i}", key.public)
            verifier.registry.describe(f"bench-{i}", DeviceProfile.of(DeviceKind.SPEAKER))
        completions = _prepare(verifier, keys, n, threads)

        def check(completion: Completion) -> None:
            verifier.check_signature(completion)

        with ThreadPoolExecutor(threads) as pool:
            start = time.perf_counter()
            list(pool.map(check, completions))
            verify_s = time.perf_counter() - start

        def place(proposal: CheckoutProposal, key: str) -> str:
            return f"ord_{key}"

        batches = db.batches
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            orders = list(pool.map(lambda c: verifier.complete(c, place), completions))
            complete_s = time.perf_counter() - start
        if len({order.order_id for order in orders}) != n:
            raise RuntimeError("the benchmark did not get one order per checkout")
        return {
            "verifications_per_s": round(n / verify_s),
            "completions_per_s": round(n / complete_s),
            "commits": db.batches - batches,
        }


def build_log(path: Path, records: int, per_job: int = 2000) -> None:
    """An audit log of `records` records shaped like the flow's (about 300 bytes each)."""
    with Database(path) as db:
        audit = AuditLog.open(db)

        def job(conn: Any, count: int) -> None:
            for _ in range(count):
                audit.append(conn, "verification", device_id="speaker-1", session_id=new_id("ses"),
                             checkout_id=new_id("co"), mandate_id=new_id("man"), modality="voice",
                             key_id="x" * 43, order_id=new_id("ord"))  # fmt: skip

        done = 0
        while done < records:
            count = min(per_job, records - done)
            db.call(lambda conn, count=count: job(conn, count))  # type: ignore[misc]
            done += count


def measure_audit(sizes: list[int], directory: Path) -> dict[str, float]:
    figures: dict[str, float] = {}
    for size in sizes:
        path = directory / f"audit-{size}.db"
        build_log(path, size)
        start = time.perf_counter()
        report = verify_log(path)
        figures[str(size)] = round(time.perf_counter() - start, 2)
        if not report.ok or report.records != size:
            raise RuntimeError(f"the benchmark's own audit log does not verify: {report}")
    return figures


def run_bench_consent(args: argparse.Namespace) -> int:
    sizes = [int(size) for size in args.audit_records.split(",") if size]
    with tempfile.TemporaryDirectory(prefix="bench-consent-", dir=args.dir) as tmp:
        figures: dict[str, Any] = measure_completions(args.n, args.threads, args.clients, args.devices, Path(tmp))
        figures["audit_verify_s"] = measure_audit(sizes, Path(tmp))
    figures["n"] = args.n
    figures["threads"] = args.threads
    figures["clients"] = args.clients
    figures["devices"] = args.devices
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    if args.json:
        print(json.dumps(figures))
    else:
        print(f"{args.n} checkouts, {args.threads} threads, {args.clients} clients, {os.cpu_count()} CPUs")
        print(f"  verifications/s: {figures['verifications_per_s']:,}")
        print(f"  durable completions/s: {figures['completions_per_s']:,} ({figures['commits']} commits)")
        for size, seconds in figures["audit_verify_s"].items():
            print(f"  audit verify, {int(size):,} records: {seconds} s")
    return 0
