"""What the platform stores need of a database connection, whichever engine is behind it.

The stores (`consent_store`, `outcomes`, `registry`, `step_up`, `profiles`, `handover`, `audit`)
write their SQL once, in the form SQLite takes: `?` and `:name` placeholders, `ON CONFLICT` clauses
(`INSERT ... ON CONFLICT DO NOTHING`, never `INSERT OR IGNORE`), `CAST(... AS BIGINT)` around sums,
no `rowid`, no `json_extract` in queries. A SQLite connection runs it as it is; the PostgreSQL
connection (`postgres.PgConnection`) rewrites the placeholders for psycopg and reports a violated
constraint as `Conflict`, as SQLite does with `sqlite3.IntegrityError`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any, Protocol

from device_sdk.protocol.errors import StoreError


class Cursor(Protocol):
    """The rows of one statement."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection inside the store's transaction (a `sqlite3.Connection` is one)."""

    def execute(self, sql: str, parameters: Any = (), /) -> Cursor: ...


class Conflict(StoreError):
    """A write broke a unique or check constraint (PostgreSQL); SQLite raises `sqlite3.IntegrityError`."""


CONFLICTS: tuple[type[Exception], ...] = (sqlite3.IntegrityError, Conflict)
"""What a job catches to handle a constraint it may break, on either engine."""
