"""The audit log is tamper-evident: edits, deletions, insertions and reorderings made directly in
the SQLite file (or the PostgreSQL tables: the `log` tests run on both) are caught by `verify_log` and
`device-sdk audit verify`, which name the first bad record."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sdk.consent.keys import SigningKey
from device_sdk.platform.checkout.audit import (
    GENESIS,
    AuditLog,
    chain_hash,
    checkpoint_message,
    key_file,
    trail,
    verify_log,
)
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.store_url import parse_store
from device_sdk.protocol.errors import StoreError
from device_sdk.protocol.fields import Outcome
from tests.consent_kit import open_shop

RECORDS = 12


def write_log(path: str | Path, records: int = RECORDS) -> None:
    """A log of `records` records in several transactions (so several checkpoints)."""
    with Database(path) as db:
        audit = AuditLog.open(db)
        for i in range(records):
            db.call(lambda conn, i=i: audit.append(conn, "note", device_id="speaker-1", session_id=f"ses_{i % 3}",
                                                   n=i, text=f"record {i + 1}"))  # fmt: skip


@pytest.fixture
def log(store: str | Path) -> str | Path:
    """A log of `RECORDS` records, in a SQLite file and in a PostgreSQL database."""
    write_log(store)
    return store


@pytest.fixture
def sqlite_log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    write_log(path)
    return path


@contextlib.contextmanager
def tamper(target: str | Path) -> Iterator[Any]:
    """A plain connection to the log's database, as someone with write access to it has; committed."""
    url = parse_store(target)
    if url.postgres:
        import psycopg

        from device_sdk.platform.checkout.postgres import PgConnection

        with psycopg.connect(str(url.dsn)) as raw:  # commits at the end
            yield PgConnection(raw)
        return
    conn = sqlite3.connect(target)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def edit(path: str | Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    with tamper(path) as conn:
        for sql, args in statements:
            conn.execute(sql, args)


def row(path: str | Path, seq: int) -> tuple[str, bytes]:
    with tamper(path) as conn:
        body, digest = conn.execute("SELECT body, hash FROM audit WHERE seq = ?", (seq,)).fetchone()
    return body, bytes(digest)


def rechain(path: str | Path, checkpoints: str = "keep", signer: SigningKey | None = None) -> None:
    """Recompute every record's hash, as an attacker who edited a record would; and the checkpoints'
    hashes too ("copy"), or re-signed with `signer` ("sign")."""
    with tamper(path) as conn:
        prev = GENESIS
        for seq, text in conn.execute("SELECT seq, body FROM audit ORDER BY seq").fetchall():
            prev = chain_hash(prev, seq, text.encode())
            conn.execute("UPDATE audit SET hash = ? WHERE seq = ?", (prev, seq))
            if checkpoints == "copy":
                conn.execute("UPDATE audit_checkpoints SET hash = ? WHERE seq = ?", (prev, seq))
            elif checkpoints == "sign" and signer is not None:
                conn.execute("UPDATE audit_checkpoints SET hash = ?, signature = ?, kid = ? WHERE seq = ?",
                             (prev, signer.sign(checkpoint_message(seq, prev)), signer.public.kid, seq))  # fmt: skip
        if signer is not None:
            conn.execute("INSERT INTO audit_keys VALUES (?, ?, 0)", (signer.public.kid, signer.public.raw))


def test_an_intact_log_verifies(log: Path) -> None:
    report = verify_log(log)
    assert report.ok and report.records == RECORDS and report.first_bad is None
    assert report.checkpoints == RECORDS  # one per transaction
    assert report.head == row(log, RECORDS)[1].hex()


def test_a_changed_record_is_named(log: Path) -> None:
    body, _ = row(log, 5)
    edit(log, ("UPDATE audit SET body = ? WHERE seq = 5", (body.replace("record 5", "record 6"),)))
    report = verify_log(log)
    assert not report.ok and report.first_bad == 5 and "changed" in (report.problem or "")


def test_a_changed_record_with_its_hash_recomputed_is_still_caught(log: Path) -> None:
    body, _ = row(log, 5)
    forged = body.replace("record 5", "record 9")
    rehashed = chain_hash(row(log, 4)[1], 5, forged.encode())
    edit(log, ("UPDATE audit SET body = ?, hash = ? WHERE seq = 5", (forged, rehashed)))
    report = verify_log(log)
    assert not report.ok and report.first_bad == 5


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoints(log: Path) -> None:
    """Rewrite record 5 and recompute every hash after it: only the checkpoints tell."""
    body, _ = row(log, 5)
    edit(log, ("UPDATE audit SET body = ? WHERE seq = 5", (body.replace("record 5", "record X"),)))
    rechain(log)
    report = verify_log(log)
    assert not report.ok and report.first_bad == 5 and "rewritten" in (report.problem or "")


def test_overwritten_checkpoint_hashes_do_not_move_the_blame(log: Path) -> None:
    """Rewrite record 5, recompute the chain and copy the new hashes into every checkpoint (whose
    signatures then no longer verify): the first bad record is still found."""
    edit(log, ("UPDATE audit SET body = replace(body, 'record 5', 'record Y') WHERE seq = 5", ()))
    rechain(log, "copy")
    report = verify_log(log)
    assert not report.ok and report.first_bad == 5


def test_a_rewritten_log_re_signed_with_another_key_fails_against_the_pinned_key(log: Path) -> None:
    real = verify_log(log)
    edit(log, ("UPDATE audit SET body = replace(body, 'record 2', 'record Z') WHERE seq = 2", ()))
    rechain(log, "sign", SigningKey.generate())
    report = verify_log(log)  # pinned by default to the key file beside the log
    assert not report.ok and report.key_pinned and report.first_bad == 1 and "not signed" in (report.problem or "")
    sidecar = key_file(parse_store(log))
    pinned_key = SigningKey.load(sidecar).public
    sidecar.rename(sidecar.with_name("elsewhere.pem"))
    unpinned = verify_log(log)  # the log alone, away from its key: consistent with the key it names...
    assert unpinned.ok and not unpinned.key_pinned
    assert not verify_log(log, key=pinned_key).ok  # ...but not with the key given
    assert not verify_log(log, head=real.head).ok  # nor with the head kept elsewhere


def test_a_removed_record_is_named(log: Path) -> None:
    edit(log, ("DELETE FROM audit WHERE seq = 7", ()))
    report = verify_log(log)
    assert not report.ok and report.first_bad == 7 and "missing" in (report.problem or "")


def test_removed_newest_records_are_caught_by_their_checkpoint(log: Path) -> None:
    edit(log, ("DELETE FROM audit WHERE seq > 10", ()))
    report = verify_log(log)
    assert not report.ok and report.first_bad == 11 and "removed" in (report.problem or "")


def test_removed_newest_records_and_checkpoints_are_caught_by_an_anchored_head(log: Path) -> None:
    head = verify_log(log).head
    edit(log, ("DELETE FROM audit WHERE seq > 10", ()), ("DELETE FROM audit_checkpoints WHERE seq > 10", ()))
    assert verify_log(log).ok  # the documented limit: a shorter log that is consistent in itself
    report = verify_log(log, head=head)
    assert not report.ok and report.first_bad == 11


def test_an_inserted_record_is_named(log: Path) -> None:
    _body, digest = row(log, RECORDS)
    forged = json.dumps({"kind": "order", "device_id": "speaker-1", "order_id": "ord_forged"})
    edit(log, ("INSERT INTO audit (seq, body, hash) VALUES (?, ?, ?)",
               (RECORDS + 1, forged, chain_hash(digest, RECORDS + 1, forged.encode()))))  # fmt: skip
    report = verify_log(log)
    assert not report.ok and report.first_bad == RECORDS + 1 and "not covered" in (report.problem or "")


def test_a_record_inserted_in_the_middle_is_named(log: Path) -> None:
    with tamper(log) as conn:
        for seq in range(RECORDS, 5, -1):  # make room at 6
            conn.execute("UPDATE audit SET seq = seq + 1 WHERE seq = ?", (seq,))
        conn.execute("INSERT INTO audit (seq, body, hash) VALUES (6, '{}', ?)", (b"\x00" * 32,))
    report = verify_log(log)
    assert not report.ok and report.first_bad == 6


def test_reordered_records_are_named(log: Path) -> None:
    (body3, hash3), (body8, hash8) = row(log, 3), row(log, 8)
    edit(log, ("UPDATE audit SET body = ?, hash = ? WHERE seq = 3", (body8, hash8)),
         ("UPDATE audit SET body = ?, hash = ? WHERE seq = 8", (body3, hash3)))  # fmt: skip
    report = verify_log(log)
    assert not report.ok and report.first_bad == 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    op=st.sampled_from(["edit", "delete", "swap", "duplicate", "hash"]),
    seq=st.integers(1, RECORDS),
    other=st.integers(1, RECORDS),
)
def test_any_single_tamper_is_caught(tmp_path_factory: pytest.TempPathFactory, op: str, seq: int, other: int) -> None:
    path = tmp_path_factory.mktemp("log") / "audit.db"
    write_log(path)
    body, digest = row(path, seq)
    if op == "edit":
        edit(path, ("UPDATE audit SET body = ? WHERE seq = ?", (body.replace('"n":', '"n": '), seq)))
    elif op == "delete":
        edit(path, ("DELETE FROM audit WHERE seq = ?", (seq,)))
    elif op == "swap":
        if other == seq:
            return
        other_body, other_hash = row(path, other)
        edit(path, ("UPDATE audit SET body = ?, hash = ? WHERE seq = ?", (other_body, other_hash, seq)),
             ("UPDATE audit SET body = ?, hash = ? WHERE seq = ?", (body, digest, other)))  # fmt: skip
    elif op == "duplicate":
        edit(path, ("INSERT INTO audit (seq, body, hash) VALUES (?, ?, ?)", (RECORDS + 1, body, digest)))
    else:
        edit(path, ("UPDATE audit SET hash = ? WHERE seq = ?", (hashlib.sha256(digest).digest(), seq)))
    report = verify_log(path)
    assert not report.ok
    assert report.first_bad == {"swap": min(seq, other), "duplicate": RECORDS + 1}.get(op, seq)


def test_a_file_that_is_not_a_log_gives_a_coded_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(StoreError):
        verify_log(junk)
    with pytest.raises(StoreError):
        verify_log(tmp_path / "missing.db")


# the log as the flow writes it, and the CLI -------------------------------------------------


@pytest.fixture
def flow_log(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    path = tmp_path / "shop.db"
    for shop in open_shop(path):
        offer = shop.offer()
        assert shop.complete(shop.confirm(offer)).outcome is Outcome.ORDERED
        shop.verifier.cancel(shop.offer().checkout_id, Outcome.DECLINED, "declined")
    return path, offer.session_id


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "device_sdk.cli", "audit", *args], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_audit_verify_and_show_from_the_command_line(flow_log: tuple[Path, str]) -> None:
    path, session = flow_log
    records = trail(path, session)
    kinds = [record["kind"] for record in records]
    assert kinds == ["terms", "verification", "order"]
    done = cli("verify", str(path))
    assert done.returncode == 0 and "intact" in done.stdout, done.stderr
    shown = cli("show", str(path), "--session", session)
    assert shown.returncode == 0
    assert [line.split()[3] for line in shown.stdout.splitlines()] == kinds
    as_json = json.loads(cli("show", str(path), "--session", session, "--json").stdout)
    assert as_json[-1]["order_id"].startswith("ord_")
    edit(path, ("UPDATE audit SET body = replace(body, 'CNY', 'USD') WHERE kind = 'order'", ()))
    broken = cli("verify", str(path), "--json")
    assert broken.returncode == 1
    report = json.loads(broken.stdout)
    assert report["ok"] is False and report["first_bad"] == records[kinds.index("order")]["seq"]
    assert "record" in cli("verify", str(path)).stdout


def test_audit_show_of_an_unknown_session_exits_non_zero(flow_log: tuple[Path, str]) -> None:
    assert cli("show", str(flow_log[0]), "--session", "ses_nope").returncode == 1
    assert cli("verify", str(flow_log[0].with_name("none.db"))).returncode == 2


def test_a_log_is_never_given_a_new_key_silently(log: Path) -> None:
    from device_sdk.protocol.errors import KeyStoreError

    key_file(parse_store(log)).unlink()  # the key file was lost
    with Database(log) as db, pytest.raises(KeyStoreError, match="restore its key file"):
        AuditLog.open(db)


def test_bad_arguments_to_the_audit_commands_are_coded_errors(sqlite_log: Path) -> None:
    log = sqlite_log
    with pytest.raises(StoreError):
        verify_log(log, head="zz")
    with pytest.raises(StoreError):
        trail(log.with_name("missing.db"), "ses_1")
    assert cli("show", str(log.with_name("missing.db")), "--session", "x").returncode == 2
    assert cli("verify", str(log), "--key", "@/nonexistent/key.pem").returncode == 2
    assert cli("verify", str(log), "--head", "zz").returncode == 2
