"""Device keys on disk and in the registry, the risk policy file, and the group-commit database."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from device_sdk.consent.keys import PublicKey, SigningKey
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.policy import PolicyBook, RiskPolicy
from device_sdk.platform.checkout.registry import DeviceRegistry, KeyStatus
from device_sdk.protocol.errors import ConfigError, ConsentError, ErrorCode, KeyStoreError, StoreError
from device_sdk.protocol.fields import Modality
from tests.consent_kit import make_proposal

# keys -----------------------------------------------------------------------------------------


def test_a_key_file_is_written_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "speaker-1.pem"
    key = SigningKey.generate()
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SigningKey.load(path).public == key.public
    with pytest.raises(KeyStoreError):
        SigningKey.generate().save(path)
    assert SigningKey.load_or_create(path).public == key.public


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = SigningKey.generate().save(tmp_path / "k.pem")
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        SigningKey.load(path)
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n")
    os.chmod(tmp_path / "junk.pem", 0o600)
    with pytest.raises(KeyStoreError):
        SigningKey.load(tmp_path / "junk.pem")
    with pytest.raises(KeyStoreError):
        SigningKey.load(tmp_path / "missing.pem")


def test_public_keys_read_from_every_form_have_the_rfc7638_thumbprint() -> None:
    key = SigningKey.generate().public
    x = key.jwk().as_dict()["x"]
    jwk = f'{{"kty": "OKP", "crv": "Ed25519", "x": "{x}"}}'
    assert PublicKey.from_text(jwk) == key
    assert PublicKey.from_text(key.jwk().as_dict()["x"]) == key
    assert key.kid == key.jwk().thumbprint()  # joserfc's RFC 7638 thumbprint agrees
    with pytest.raises(KeyStoreError):
        PublicKey.from_text("not a key")


def test_registry_register_rotate_revoke(tmp_path: Path) -> None:
    with Database(tmp_path / "r.db") as db:
        registry = DeviceRegistry(db)
        first, second = SigningKey.generate().public, SigningKey.generate().public
        assert registry.register("speaker-1", first) == first.kid
        assert registry.register("speaker-1", first) == first.kid  # again: no change
        with pytest.raises(KeyStoreError) as caught:
            registry.register("speaker-1", second)  # a second active key needs a rotation
        assert caught.value.code == ErrorCode.KEY_CONFLICT
        with pytest.raises(KeyStoreError):
            registry.register("speaker-2", first)  # one key, one device
        registry.rotate("speaker-1", second)
        statuses = {r.kid: r.status for r in registry.records("speaker-1")}
        assert statuses == {first.kid: KeyStatus.RETIRED, second.kid: KeyStatus.ACTIVE}
        retired = next(r for r in registry.records("speaker-1") if r.kid == first.kid)
        retired_at = retired.retired_at or 0.0
        assert retired.valid_at(retired.added_at, retired_at + 1)
        assert not retired.valid_at(retired_at + 1, retired_at + 1)  # issued after the rotation
        assert not retired.valid_at(retired.added_at, retired_at + 901)  # 15 minutes on, not at all
        assert registry.revoke("speaker-1") == 2
        assert {r.status for r in registry.records()} == {KeyStatus.REVOKED}
        with pytest.raises(KeyStoreError):
            registry.rotate("speaker-1", first)  # a revoked key never comes back


# policy ---------------------------------------------------------------------------------------


def test_policy_layers_defaults_file_and_device(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('blocked_categories = ["alcohol", "pets"]\n[devices.kids-speaker]\nvoice_cap_minor = {CNY = 0}\n')
    book = PolicyBook.load(path)
    assert book.for_device("speaker-1").blocked_categories == ["alcohol", "pets"]
    assert book.for_device("speaker-1").voice_cap_minor == {"CNY": 50_000}  # a default
    kids = book.for_device("kids-speaker")
    assert kids.voice_cap_minor == {"CNY": 0} and kids.blocked_categories == ["alcohol", "pets"]
    milk = make_proposal(items=(("milk-1l", 1),)).proposal
    assert Modality.VOICE not in kids.modalities(milk) and Modality.VOICE in book.default.modalities(milk)


@pytest.mark.parametrize(
    ("text", "where"),
    [("voice_cap = 5", "voice_cap"), ("orders_per_minute = -1", "orders_per_minute"), ("[[x", "not TOML"),
     ("voice_cap_minor = {cny = 5}", "voice_cap_minor")],
)  # fmt: skip
def test_a_bad_policy_file_is_a_clear_config_error(text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        PolicyBook.parse(text)
    with pytest.raises(ConfigError, match="cannot read"):
        PolicyBook.load("/nonexistent/policy.toml")


def test_uncategorised_lines_and_merchant_allow_list() -> None:
    issued = make_proposal(items=(("milk-1l", 1),)).proposal
    bare = issued.model_copy(update={"lines": [issued.lines[0].model_copy(update={"category": None})]})
    with pytest.raises(ConsentError) as caught:
        RiskPolicy().check_proposal(bare)
    assert caught.value.code == ErrorCode.CATEGORY_BLOCKED
    RiskPolicy(allow_uncategorized=True).check_proposal(bare)
    with pytest.raises(ConsentError) as caught:
        RiskPolicy(merchants=["m-homegoods"]).check_proposal(issued)
    assert caught.value.code == ErrorCode.MERCHANT_NOT_ALLOWED
    RiskPolicy(merchants=[issued.merchant.id, "m-fresh"]).check_proposal(issued)


# the database ---------------------------------------------------------------------------------


def test_a_failing_job_rolls_back_alone_and_batches_commit_together(tmp_path: Path) -> None:
    with Database(tmp_path / "d.db") as db:
        db.ensure_schema(["CREATE TABLE t (k TEXT PRIMARY KEY)"])
        started, gate = threading.Event(), threading.Event()
        db.submit(lambda conn: (started.set(), gate.wait(5)))  # hold the writer so the next jobs form one batch
        assert started.wait(5)
        ok = db.submit(lambda conn: conn.execute("INSERT INTO t VALUES ('a')").rowcount)
        clash = db.submit(lambda conn: [conn.execute("INSERT INTO t VALUES ('b')"),
                                        conn.execute("INSERT INTO t VALUES ('a')")])  # fmt: skip
        later = db.submit(lambda conn: conn.execute("INSERT INTO t VALUES ('c')").rowcount)
        batches = db.batches
        gate.set()
        assert ok.result(5) == 1 and later.result(5) == 1
        with pytest.raises(StoreError):
            clash.result(5)
        assert db.batches == batches + 2  # the gate's batch, then the three jobs in one
        with db.reading() as conn:
            assert [r[0] for r in conn.execute("SELECT k FROM t ORDER BY k")] == ["a", "c"]  # no 'b'
    with pytest.raises(StoreError):
        db.submit(lambda conn: None)
    raw = sqlite3.connect(tmp_path / "d.db")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_every_job_is_settled_when_a_batch_fails(tmp_path: Path) -> None:
    with Database(tmp_path / "d.db") as db:
        db.ensure_schema(["CREATE TABLE t (x)"])

        def ends_the_transaction(conn: sqlite3.Connection) -> None:
            conn.execute("ROLLBACK")  # as SQLite does itself on a full disk or an I/O error
            raise RuntimeError("boom")

        started, gate = threading.Event(), threading.Event()
        db.submit(lambda conn: (started.set(), gate.wait(5)))
        assert started.wait(5)
        bad, innocent = (
            db.submit(ends_the_transaction),
            db.submit(lambda conn: conn.execute("INSERT INTO t VALUES (1)")),
        )
        gate.set()
        for future in (bad, innocent):
            with pytest.raises(StoreError):
                future.result(5)  # settled, not hanging
        failing = [True]
        db.before_batch(lambda conn: (_ for _ in ()).throw(RuntimeError("hook")) if failing and failing.pop() else None)
        with pytest.raises(StoreError):
            db.call(lambda conn: 1)
        assert db.call(lambda conn: 2) == 2  # and the writer goes on


def test_read_connections_are_closed_after_use(tmp_path: Path) -> None:
    with Database(tmp_path / "d.db") as db:
        with db.reading() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")


def test_processes_racing_to_make_one_key_file_get_the_same_key(tmp_path: Path) -> None:
    path, keys = tmp_path / "audit-key.pem", []
    barrier = threading.Barrier(8)

    def make() -> None:
        barrier.wait()
        keys.append(SigningKey.load_or_create(path).public)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(keys) == 8 and len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["audit-key.pem"]  # no temporary file left
