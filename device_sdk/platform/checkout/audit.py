"""The audit log: append-only and tamper-evident, a hash chain with signed checkpoints, in SQLite.

Record `n` (from 1) holds `body`, canonical JSON (sorted keys, no spaces, UTF-8), and
`hash = SHA-256(hash[n-1] || n as 8 bytes big-endian || body)`, with 32 zero bytes before the
first record. Every write transaction that appends records ends with a checkpoint: the last
`seq` and its `hash`, signed (Ed25519) over `b"device-sdk audit checkpoint v1\\n" || seq (8 bytes)
|| hash` by the log's key. `verify_log` recomputes the chain, compares every checkpoint and checks
the last one's signature, so a record that was changed, removed, inserted or reordered is found and
named. Deleting the newest records together with their checkpoints leaves a shorter valid log;
anchor the head elsewhere (`audit verify --head`) to catch that too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from device_sdk.consent.keys import PublicKey, SigningKey
from device_sdk.protocol.errors import ErrorCode, KeyStoreError, StoreError
from device_sdk.terminal import printable

from .database import Database, connect
from .sql import Connection
from .store_url import StoreUrl, parse_store

GENESIS = bytes(32)
KEY_SUFFIX = ".audit-key.pem"
"""The log's checkpoint key lives beside it: `<log file>.audit-key.pem`."""
CHECKPOINT_PREFIX = b"device-sdk audit checkpoint v1\n"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS audit (
        seq INTEGER PRIMARY KEY,
        body TEXT NOT NULL,
        hash BLOB NOT NULL,
        kind TEXT GENERATED ALWAYS AS (json_extract(body, '$.kind')) VIRTUAL,
        session_id TEXT GENERATED ALWAYS AS (json_extract(body, '$.session_id')) VIRTUAL
    )""",
    "CREATE INDEX IF NOT EXISTS audit_session ON audit (session_id)",
    """CREATE TABLE IF NOT EXISTS audit_checkpoints (
        seq INTEGER PRIMARY KEY, hash BLOB NOT NULL, kid TEXT NOT NULL, signature BLOB NOT NULL, at REAL NOT NULL
    )""",
    "CREATE TABLE IF NOT EXISTS audit_keys (kid TEXT PRIMARY KEY, public_key BLOB NOT NULL, added_at REAL NOT NULL)",
)
PG_SCHEMA = (
    # the body stays text, byte for byte as hashed; what queries look up is read from it as jsonb
    """CREATE TABLE IF NOT EXISTS audit (
        seq BIGINT PRIMARY KEY,
        body TEXT NOT NULL,
        hash BYTEA NOT NULL,
        kind TEXT GENERATED ALWAYS AS (body::jsonb ->> 'kind') STORED,
        session_id TEXT GENERATED ALWAYS AS (body::jsonb ->> 'session_id') STORED
    )""",
    *SCHEMA[1:],
)


def canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def chain_hash(prev: bytes, seq: int, body: bytes) -> bytes:
    return hashlib.sha256(prev + seq.to_bytes(8, "big") + body).digest()


def checkpoint_message(seq: int, head: bytes) -> bytes:
    return CHECKPOINT_PREFIX + seq.to_bytes(8, "big") + head


class AuditLog:
    """Appends records in the database's write transactions and signs a checkpoint per transaction.

    One `AuditLog` per `Database`: the gateway, the verifier and the checkout share it.
    """

    def __init__(self, db: Database, key: SigningKey) -> None:
        self.db = db
        self.key = key
        db.ensure_schema(PG_SCHEMA if db.dialect == "postgresql" else SCHEMA)
        self._head: tuple[int, bytes] | None = None
        db.call(self._register_key)
        db.before_batch(self._read_head)
        db.on_rollback(self._forget_head)
        db.after_batch(self._checkpoint)

    @classmethod
    def open(cls, db: Database, key_path: str | Path | None = None) -> AuditLog:
        """The log in `db`, signing with the key at `key_path` (default: beside the database), made if new."""
        path = Path(key_path) if key_path is not None else key_file(db.url)
        return cls(db, SigningKey.load_or_create(path))

    def _register_key(self, conn: Connection) -> None:
        """Record this log's key; a log already signed by another key keeps it (no silent new key)."""
        known = [row[0] for row in conn.execute("SELECT kid FROM audit_keys")]
        if known and self.key.public.kid not in known:
            raise KeyStoreError(
                f"this audit log is signed by {', '.join(known)}, not by {self.key.public.kid}: "
                "restore its key file instead of making a new one"
            )
        conn.execute(
            "INSERT INTO audit_keys (kid, public_key, added_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (self.key.public.kid, self.key.public.raw, time.time()),
        )

    def append(
        self,
        conn: Connection,
        kind: str,
        *,
        device_id: str | None = None,
        session_id: str | None = None,
        checkout_id: str | None = None,
        **data: Any,
    ) -> int:
        """Append one record inside the caller's write transaction; returns its `seq`."""
        fields = {"device_id": device_id, "session_id": session_id, "checkout_id": checkout_id, **data}
        return self.append_many(conn, [(kind, fields)])

    def append_many(self, conn: Connection, records: list[tuple[str, dict[str, Any]]]) -> int:
        """Append records (kind, fields) in one statement inside the caller's write transaction;
        returns the last `seq`."""
        if self._head is None:
            self._read_head(conn)
        assert self._head is not None
        seq, prev = self._head
        at, rows = round(time.time(), 6), list[object]()
        for kind, fields in records:
            record = {"at": at, "kind": kind, **fields}
            body = canonical({k: v for k, v in record.items() if v is not None})
            seq, prev = seq + 1, chain_hash(prev, seq + 1, body.encode())
            rows.extend((seq, body, prev))
        values = ", ".join(["(?, ?, ?)"] * len(records))
        conn.execute(f"INSERT INTO audit (seq, body, hash) VALUES {values}", rows)
        self._head = (seq, prev)
        return seq

    async def record(self, kind: str, **fields: Any) -> int:
        """Append one record in a transaction of its own."""
        return await self.db.run(lambda conn: self.append(conn, kind, **fields))

    def _read_head(self, conn: Connection) -> None:
        """At the start of each write transaction (which holds SQLite's write lock): the chain's head,
        which another process may have moved since."""
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._head = (row[0], bytes(row[1])) if row else (0, GENESIS)

    def _forget_head(self, conn: Connection | None) -> None:
        if conn is None:
            self._head = None
        else:
            self._read_head(conn)

    def _checkpoint(self, conn: Connection) -> None:
        head = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        if head is None:
            return
        last = conn.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0]
        if last == head[0]:
            return
        seq, digest = head
        conn.execute(
            "INSERT INTO audit_checkpoints (seq, hash, kid, signature, at) VALUES (?, ?, ?, ?, ?)",
            (seq, digest, self.key.public.kid, self.key.sign(checkpoint_message(seq, digest)), time.time()),
        )


@dataclass(frozen=True)
class AuditReport:
    """What `verify_log` found. `first_bad` names the first record that is not as it was written."""

    path: str
    ok: bool
    records: int
    checkpoints: int
    head: str | None
    key_id: str | None
    key_pinned: bool
    first_bad: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def key_file(url: StoreUrl) -> Path:
    """The checkpoint key's default file: beside a SQLite log; for PostgreSQL, in the state directory
    under the database's host, port and name (`StoreUrl.beside`; every gateway of one database must
    have the same one)."""
    return url.beside(KEY_SUFFIX)


def verify_log(path: str | Path | StoreUrl, *, key: PublicKey | None = None, head: str | None = None) -> AuditReport:
    """Check the whole log at `path`.

    `key` pins the checkpoint key; by default it is the key file beside the log
    (`<log>.audit-key.pem`), and only when there is none the key recorded in the log itself (the
    report says `key_pinned: false`: anyone who can write the file can then re-sign it). `head`
    (hex) is a checkpoint hash kept elsewhere, which the log must still contain.
    """
    url = parse_store(path)
    try:
        anchor = bytes.fromhex(head) if head else None
    except ValueError:
        raise StoreError(f"--head must be a hex checkpoint hash, not {head!r}", ErrorCode.AUDIT_BROKEN) from None
    sidecar = key_file(url)
    if key is None and sidecar.exists():
        key = SigningKey.load(sidecar).public
    if url.postgres:
        with _reading_postgres(url) as pg:
            return _verify(pg, str(url), key, anchor)
    path = url.path or Path()
    with _reading(path) as conn:
        conn.text_factory = bytes
        return _verify(conn, str(path), key, anchor)


@contextlib.contextmanager
def _reading_postgres(url: StoreUrl) -> Iterator[Connection]:
    """A read-only connection to the log in PostgreSQL, in one REPEATABLE READ snapshot."""
    from .postgres import connect_readonly

    conn = connect_readonly(url)
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield conn
    except StoreError as exc:
        raise StoreError(f"{url} is not a readable audit log: {exc}", ErrorCode.AUDIT_BROKEN) from None
    finally:
        conn.raw.close()


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the log at `path`; any SQLite failure is a coded `StoreError`."""
    if not path.is_file():
        raise StoreError(f"no audit log at {path}", ErrorCode.AUDIT_BROKEN)
    try:
        conn = connect(path, readonly=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}", ErrorCode.AUDIT_BROKEN) from None
    try:
        yield conn
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a readable audit log: {exc}", ErrorCode.AUDIT_BROKEN) from None
    finally:
        conn.close()


def _verify(conn: Connection, path: str, pinned: PublicKey | None, anchor: bytes | None) -> AuditReport:
    """(SQLite gives text as bytes here, `text_factory`; PostgreSQL as str.)"""
    checkpoints = {
        seq: (bytes(digest), _text(kid), bytes(signature))
        for seq, digest, kid, signature in conn.execute("SELECT seq, hash, kid, signature FROM audit_checkpoints")
    }
    keys = {_text(kid): PublicKey(bytes(raw)) for kid, raw in conn.execute("SELECT kid, public_key FROM audit_keys")}
    last_checkpoint = max(checkpoints, default=0)
    count, prev, anchored = 0, GENESIS, anchor is None
    matched: list[int] = []  # checkpoints that match the chain so far, oldest first

    def signed(seq: int) -> bool:
        digest, kid, signature = checkpoints[seq]
        public = pinned if pinned is not None else keys.get(kid)
        return public is not None and public.kid == kid and public.verify(signature, checkpoint_message(seq, digest))

    def trusted_until() -> int:
        """The newest matching checkpoint with a good signature: the records up to it are intact.
        (Only the signatures needed are checked: a log of a million records has many checkpoints.)"""
        return next((seq for seq in reversed(matched) if signed(seq)), 0)

    def report(first_bad: int | None, problem: str | None) -> AuditReport:
        kid = checkpoints[last_checkpoint][1] if last_checkpoint else None
        return AuditReport(path, problem is None, count, len(checkpoints), prev.hex() if count else None, kid,
                           pinned is not None, first_bad, problem)  # fmt: skip

    for seq, body, stored in conn.execute("SELECT seq, body, hash FROM audit ORDER BY seq"):
        expected = count + 1
        if seq != expected:
            return report(expected, f"record {expected} is missing (the next one is {seq})")
        digest = chain_hash(prev, seq, body.encode() if isinstance(body, str) else body)
        if digest != bytes(stored):
            return report(seq, f"record {seq} was changed or moved: its hash does not match its content and place")
        count, prev = seq, digest
        checkpoint = checkpoints.get(seq)
        if checkpoint is not None:
            if checkpoint[0] != digest:
                good = trusted_until()
                return report(good + 1, f"records {good + 1} to {seq} were rewritten: the chain no longer matches "
                              f"the signed checkpoints after {good}")  # fmt: skip
            matched.append(seq)
        if not anchored and digest == anchor:
            anchored = True
    if last_checkpoint > count:
        return report(count + 1, f"records {count + 1} to {last_checkpoint} were removed (a checkpoint covers them)")
    if count > last_checkpoint:
        return report(last_checkpoint + 1, f"records {last_checkpoint + 1} to {count} are not covered by a "
                      "signed checkpoint (added outside the log)")  # fmt: skip
    if count and not signed(last_checkpoint):
        good = trusted_until()
        signer = "the pinned key" if pinned is not None else "the log's key"
        return report(good + 1, f"the checkpoints after {good} are not signed by {signer}: records {good + 1} to "
                      f"{count} cannot be trusted")  # fmt: skip
    if not anchored:
        return report(count + 1, "the anchored head is not in the log: newer records and checkpoints were removed")
    return report(None, None)


def verified_records(path: str | Path | StoreUrl, kind: str) -> tuple[AuditReport, list[dict[str, Any]]]:
    """Check the whole log at `path` (as `verify_log`, with the key file beside it) and, in the same
    read snapshot, read every record of `kind` that the check covered, oldest first; none when the log
    is broken."""
    url = parse_store(path)
    sidecar = key_file(url)
    key = SigningKey.load(sidecar).public if sidecar.exists() else None
    query = "SELECT seq, body FROM audit WHERE kind = ? AND seq <= ? ORDER BY seq"
    if url.postgres:
        with _reading_postgres(url) as pg:  # one REPEATABLE READ snapshot: what is read is what was verified
            report = _verify(pg, str(url), key, None)
            rows = pg.execute(query, (kind, report.records)).fetchall()
    else:
        with _reading(url.path or Path()) as conn:
            conn.text_factory = bytes
            conn.execute("BEGIN")  # one snapshot: what is read is what was verified
            report = _verify(conn, str(url.path), key, None)
            rows = conn.execute(query, (kind, report.records)).fetchall()
            conn.execute("COMMIT")
    return report, [{"seq": seq, **json.loads(body)} for seq, body in rows] if report.ok else []


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def trail(path: str | Path | StoreUrl, session_id: str) -> list[dict[str, Any]]:
    """Every record of a session, oldest first, each with its `seq`."""
    url = parse_store(path)
    query = "SELECT seq, body FROM audit WHERE session_id = ? ORDER BY seq"
    if url.postgres:
        with _reading_postgres(url) as pg:
            rows = pg.execute(query, (session_id,)).fetchall()
    else:
        with _reading(url.path or Path()) as conn:
            rows = conn.execute(query, (session_id,)).fetchall()
    return [{"seq": seq, **json.loads(body)} for seq, body in rows]


def describe(record: dict[str, Any]) -> str:
    """One readable line for a record in `audit show`: what a device sent (heard and request text) is
    `printable`, so that it cannot drive the operator's terminal (`--json` keeps it raw)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.get("at", 0)))
    skip = {"seq", "at", "kind", "device_id", "session_id"}
    details = " ".join(f"{k}={_short(v)}" for k, v in record.items() if k not in skip)
    line = f"{record['seq']:>7} {when}Z {record.get('kind', '?'):<13} {record.get('device_id', '-')}  {details}"
    return printable(line)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 72 else text[:69] + "..."
