"""The platform stores on PostgreSQL, through psycopg 3 and a psycopg-pool connection pool.

The stores' SQL is written once (see `sql`); `translate` rewrites its placeholders for psycopg and
`ddl` its column types (`REAL` timestamps become `DOUBLE PRECISION`, `BLOB` `BYTEA`, `INTEGER`
`BIGINT`). Every write transaction takes one advisory lock (`pg_advisory_xact_lock(WRITE_LOCK)`)
before its first read, so the writes of every gateway run one after another, as SQLite runs them:
the audit log is one hash chain (each record's hash covers the one before, so two transactions
cannot both append), and the checks that count (a 1-per-minute velocity limit, the daily cap,
single-use marks) read the rows the previous writer committed. Under READ COMMITTED without the
lock, two verifiers both passed a 1-per-minute velocity check here; with it, each statement after
the lock sees every earlier commit. Group commit (one transaction per batch of jobs) makes one
lock hold serve many sessions. Reads run in REPEATABLE READ, READ ONLY transactions, consistent
across their statements.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg_pool

from device_sdk.protocol.errors import StoreError

from .sql import Conflict, Connection, Cursor
from .store_url import StoreUrl

WRITE_LOCK = 0x0D5D_C0DE
"""The advisory lock every write transaction holds (one per database)."""
_TYPES = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bBLOB\b"), "BYTEA"),
          (re.compile(r"\bINTEGER\b"), "BIGINT"))  # fmt: skip
_TOKENS = re.compile(r"'(?:[^']|'')*'|::|\?|:[A-Za-z_][A-Za-z0-9_]*|%")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """`sql` with SQLite's placeholders (`?`, `:name`) as psycopg's (`%s`, `%(name)s`) and every `%`
    doubled; placeholders inside quoted literals and `::` casts kept."""

    def token(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        if text.startswith("'"):
            return text.replace("%", "%%")
        if text.startswith(":") and text != "::":
            return f"%({text[1:]})s"
        return text

    return _TOKENS.sub(token, sql)


def ddl(statement: str) -> str:
    """A SQLite `CREATE` statement with PostgreSQL's column types."""
    for pattern, name in _TYPES:
        statement = pattern.sub(name, statement)
    return statement


class PgConnection:
    """A psycopg connection that runs the stores' SQL (`sql.Connection`)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor:
        try:
            if parameters:
                return self.raw.execute(translate(sql), parameters)
            return self.raw.execute(sql)
        except psycopg.errors.IntegrityError as exc:
            raise Conflict(f"constraint violated: {exc.diag.message_primary or exc}") from None
        except psycopg.Error as exc:
            raise StoreError(f"database error: {exc}") from None


class PostgresEngine:
    """A pool of connections to one PostgreSQL database; `Database` runs its writes and reads here."""

    name = "postgresql"

    def __init__(self, url: StoreUrl, *, max_size: int = 8, timeout: float = 10.0) -> None:
        assert url.dsn is not None
        self.url = url
        kwargs: dict[str, Any] = {"autocommit": True}
        if url.password is not None:
            kwargs["password"] = url.password
        self.pool = psycopg_pool.ConnectionPool(
            url.dsn, kwargs=kwargs, min_size=1, max_size=max_size, open=False, timeout=timeout,
            check=psycopg_pool.ConnectionPool.check_connection, name=f"device-sdk:{url}",
        )  # fmt: skip
        try:
            self.pool.open(wait=True, timeout=timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self.pool.close()
            raise StoreError(f"cannot connect to {url}: {exc}") from None

    @contextmanager
    def writer(self) -> Iterator[PgConnection]:
        """A connection for one batch (a fresh one after a lost connection)."""
        try:
            cm = self.pool.connection()
            raw = cm.__enter__()
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(f"cannot connect to {self.url}: {exc}") from None
        try:
            yield PgConnection(raw)
        finally:
            cm.__exit__(None, None, None)

    def ddl(self, statement: str) -> str:
        return ddl(statement)

    def begin(self, conn: Connection) -> None:
        conn.execute(f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({WRITE_LOCK})")

    def rollback(self, conn: Connection) -> None:
        assert isinstance(conn, PgConnection)
        if conn.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not conn.raw.closed:
            conn.raw.execute("ROLLBACK")

    @contextmanager
    def reading(self) -> Iterator[PgConnection]:
        """A connection in a read-only transaction with one snapshot, rolled back afterwards."""
        with self.writer() as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                yield conn
            finally:
                self.rollback(conn)

    def close(self) -> None:
        self.pool.close()


def connect_readonly(url: StoreUrl) -> PgConnection:
    """One connection whose transactions are all read only (`audit verify`, `audit show`): give it a
    role that may only read, too (docs/scale.md)."""
    assert url.dsn is not None
    try:
        raw = psycopg.connect(url.dsn, password=url.password, autocommit=True,
                              options="-c default_transaction_read_only=on")  # fmt: skip
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to {url}: {exc}") from None
    return PgConnection(raw)
