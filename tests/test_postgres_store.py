"""The platform stores on PostgreSQL: what differs from SQLite and must still hold.

The store tests themselves (`test_consent`, `test_audit`, `test_step_up`, `test_crash_outcome`) run
on both engines through the `store` fixture; here, what only PostgreSQL's concurrency and roles
bring: two verifiers (two gateways' pools and writer threads) racing a 1-per-minute velocity check,
`audit verify` through a role that may only read, and the database URL's password rules.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from device_sdk.platform.checkout.audit import AuditLog, verify_log
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.policy import PolicyBook
from device_sdk.platform.checkout.postgres import connect_readonly, translate
from device_sdk.platform.checkout.store_url import parse_store
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.protocol.errors import ConfigError, DeviceSdkError, ErrorCode, StoreError
from device_sdk.protocol.fields import Outcome
from tests.conftest import PostgresServer
from tests.consent_kit import AUDIENCE, Shop, make_proposal, open_shop

MILK = (("milk-1l", 1),)


def test_two_verifiers_racing_a_one_per_minute_velocity_check_order_once(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateways (each its own Database: pool, writer thread, verifier) complete two checkouts
    of one device at the same moment under `orders_per_minute = 1`: one orders, the other is
    refused for velocity. Under READ COMMITTED without the write lock both read no order in the
    last minute and both passed."""
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    url = postgres_server.new_database()
    policy = PolicyBook.parse("orders_per_minute = 1")
    for shop in open_shop(url, policy):
        with Database(url) as other_db:
            other = ConsentVerifier(other_db, AuditLog.open(other_db), audience=AUDIENCE, policy=policy)
            for round_ in range(3):
                device = f"racer-{round_}"
                shop.enroll(device)
                offers = [shop.offer(make_proposal(device, MILK)) for _ in range(2)]
                completions = [shop.confirm(offer) for offer in offers]
                outcomes = _race(shop, [shop.verifier, other], completions)
                assert sorted(outcomes) == sorted([Outcome.ORDERED.value, ErrorCode.VELOCITY_LIMIT.value]), outcomes
        assert len(shop.verifier.orders()) == 3
        assert verify_log(url, key=shop.verifier.audit.key.public).ok  # one chain, however the writes raced


def _race(shop: Shop, verifiers: list[ConsentVerifier], completions: list[object]) -> list[str]:
    barrier, outcomes = threading.Barrier(len(verifiers)), list[str]()

    def submit(verifier: ConsentVerifier, completion: object) -> None:
        barrier.wait()
        try:
            outcomes.append(verifier.complete(completion, shop.place).outcome.value)  # type: ignore[arg-type]
        except DeviceSdkError as exc:  # a refusal, or a store failure (which the assertion names)
            outcomes.append(exc.code.value)

    threads = [threading.Thread(target=submit, args=pair) for pair in zip(verifiers, completions, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcomes


def test_audit_verify_runs_with_a_read_only_role_and_finds_tampering(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    url = postgres_server.new_database()
    dbname = url.rsplit("/", 1)[1]
    for shop in open_shop(url):
        shop.complete(shop.confirm(shop.offer()))
        key = shop.verifier.audit.key.public
    postgres_server.admin("DO $$ BEGIN CREATE ROLE auditor LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    postgres_server.admin("GRANT SELECT ON audit, audit_checkpoints, audit_keys TO auditor", dbname)
    auditor = postgres_server.url(dbname, user="auditor")
    report = verify_log(auditor, key=key)
    assert report.ok and report.records >= 3, report
    reader = connect_readonly(parse_store(auditor))
    try:
        with pytest.raises(StoreError):  # the role may not write, and the session is read only anyway
            reader.execute("DELETE FROM audit WHERE seq = ?", (1,))
    finally:
        reader.raw.close()
    postgres_server.admin("UPDATE audit SET body = replace(body, 'terms', 'TERMS') WHERE seq = 1", dbname)
    broken = verify_log(auditor, key=key)
    assert not broken.ok and broken.first_bad == 1


def test_a_password_never_comes_in_the_database_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="password in the database URL"):
        parse_store("postgresql://app:secret@127.0.0.1:5432/shop")
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    assert parse_store("postgresql://app@127.0.0.1:5432/shop", secret).password == "s3cret"
    monkeypatch.setenv("DEVICE_SDK_DATABASE_PASSWORD", "from-env")
    assert parse_store("postgresql://app@127.0.0.1/shop").password == "from-env"
    assert parse_store("sqlite:///var/lib/shop.db").path == Path("/var/lib/shop.db")
    assert parse_store("shop.db").path == Path("shop.db")
    with pytest.raises(ConfigError):
        parse_store("mysql://app@host/shop")
    with pytest.raises(ConfigError):
        parse_store("shop.db", secret)  # a password file is for PostgreSQL only


def test_placeholders_are_rewritten_outside_literals_only() -> None:
    sql = "SELECT a FROM t WHERE b = ? AND c = :name AND d = 'x?:y%' AND e::text LIKE '%z'"
    assert translate(sql) == "SELECT a FROM t WHERE b = %s AND c = %(name)s AND d = 'x?:y%%' AND e::text LIKE '%%z'"


def test_a_cancelled_checkout_reads_as_ended_with_its_reason(store: str | Path) -> None:
    """`order.status` of a declined checkout reads its cancel record (the audit body, read as JSON
    by the store on either engine), not another checkout's of the same session."""
    for shop in open_shop(store):
        offer = shop.offer()
        shop.verifier.cancel(offer.checkout_id, Outcome.DECLINED, "the user said no")
        other = shop.offer()
        ended = shop.verifier.status(offer.proposal.device_id, offer.session_id, offer.checkout_id)
        assert ended.state == "ended" and ended.result is not None
        assert (ended.result.outcome, ended.result.reason) == (Outcome.DECLINED, "the user said no")
        still = shop.verifier.status(other.proposal.device_id, other.session_id, other.checkout_id)
        assert still.state == "open"


def test_keys_and_audit_verify_from_the_command_line_on_postgresql(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keys create --database URL` registers in PostgreSQL; `audit verify URL` reads it back (with the
    key file kept in the state directory, so pinned); a URL with a password is refused (exit 2)."""
    url = postgres_server.new_database()
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    env = dict(os.environ)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "device_sdk.cli", *args], capture_output=True, text=True,
                              env=env, timeout=120)  # fmt: skip

    made = cli("keys", "create", "speaker-9", "--database", url, "--out", str(tmp_path / "s9.pem"))
    assert made.returncode == 0, made.stderr
    with Database(url) as db:
        assert [r.device_id for r in ConsentVerifier(db, AuditLog.open(db), audience=AUDIENCE).registry.records()] == [
            "speaker-9"
        ]
    verified = cli("audit", "verify", url, "--json")
    assert verified.returncode == 0, verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and report["key_pinned"] and report["records"] == 0  # keys are not audited; the log is there
    refused = cli("keys", "list", "--database", url.replace("app@", "app:hunter2@"))
    assert refused.returncode == 2 and "hunter2" not in refused.stderr + refused.stdout


def test_a_restarted_postgresql_is_reconnected_to_and_loses_nothing(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL restarted under an open store (every connection cut): the pool checks a connection
    before lending it, so the first read and write after the restart reconnect and commit (without
    the check the first batch failed), and what was committed before is all there."""
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    url = postgres_server.new_database()
    for shop in open_shop(url):
        before = shop.complete(shop.confirm(shop.offer()))
        offer = shop.offer()  # opened before the restart
        postgres_server.restart()
        assert shop.verifier.status(offer.proposal.device_id, offer.session_id, offer.checkout_id).state == "open"
        after = shop.complete(shop.confirm(offer))
        assert after.outcome is Outcome.ORDERED
        assert [row[0] for row in shop.verifier.orders()] == [before.order_id, after.order_id]
        assert verify_log(url, key=shop.verifier.audit.key.public).ok


def test_provision_registers_a_device_in_postgresql(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`provision --database URL`: the device's key, kind and PIN go to PostgreSQL, the password of
    the database to its file; `--revoke` revokes there."""
    from device_sdk.cli import main

    url = postgres_server.new_database()
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    pin = tmp_path / "pin"
    pin.write_text("482913\n")
    where = ["--dir", str(tmp_path / "broker"), "--database", url, "--key-out", str(tmp_path / "g.pem")]
    assert main(["provision", "glasses-7", "--kind", "glasses", "--pin-file", str(pin), *where]) == 0
    with Database(url) as db:
        registry = ConsentVerifier(db, AuditLog.open(db), audience=AUDIENCE).registry
        assert [(r.device_id, r.status.value) for r in registry.records()] == [("glasses-7", "active")]
        profile = registry.profile("glasses-7")
        assert profile is not None and profile.kind.value == "glasses"
        with db.reading() as conn:
            pins = conn.execute("SELECT count(*) FROM device_pins WHERE device_id = ?", ("glasses-7",)).fetchone()
        assert pins[0] == 1
    assert main(["provision", "glasses-7", "--revoke", *where[:4]]) == 0
    with Database(url) as db:
        registry = ConsentVerifier(db, AuditLog.open(db), audience=AUDIENCE).registry
        assert [r.status.value for r in registry.records()] == ["revoked"]


def test_the_launcher_says_postgresql_is_missing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not installed"):
        PostgresServer(binaries=tmp_path)  # no pg_ctl there


async def test_a_paused_postgresql_refuses_connections_then_comes_back_with_its_data(
    postgres_server: PostgresServer,
) -> None:
    """`pause` (the fleet bench's `--db-pause-at`): the server is really down for a while, then up on
    the same port with what was committed before."""
    url = postgres_server.new_database()
    dbname = url.rsplit("/", 1)[1]
    postgres_server.admin("CREATE TABLE kept (x INTEGER); INSERT INTO kept VALUES (7)", dbname)
    pausing = asyncio.ensure_future(postgres_server.pause(1.0))
    refused = False
    for _ in range(500):  # bounded: until a connection is refused, or the pause is over
        try:
            await asyncio.to_thread(postgres_server.admin, "SELECT 1", dbname)
        except StoreError:
            refused = True
            break
        if pausing.done():
            break
        await asyncio.sleep(0.01)
    down = await pausing
    assert refused
    assert down >= 1.0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(7,)]
