"""The platform stores' database (a SQLite file, or PostgreSQL: `postgres`), written by one thread
with group commit.

Every write is a job: a function of the connection, run inside a transaction. The writer thread
takes every job that is waiting, runs each under its own savepoint (a job that raises rolls back
alone), runs the batch hooks (the audit log signs a checkpoint there), and commits once with
`synchronous=FULL`: each job's effects are on disk when its future resolves, and one fsync serves
the whole batch. A caller that blocks on its commit holds a thread meanwhile: `in_thread` runs such
calls on the database's own pool of waiting threads, as many as a batch may hold. Several processes
may open the same file; SQLite serialises their transactions (on PostgreSQL an advisory lock does:
`postgres`). `Database(target)` takes a path, `sqlite:///PATH` or `postgresql://USER@HOST:PORT/DBNAME`
(`store_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from device_sdk.protocol.errors import DeviceSdkError, StoreError

from .sql import Connection
from .store_url import StoreUrl, parse_store

if TYPE_CHECKING:
    from .postgres import PostgresEngine

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")
Job = Callable[[Connection], T]
_STOP = object()


def connect(path: str | Path, *, readonly: bool = False, busy_timeout: float = 30.0) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, foreign keys on."""
    if readonly:
        conn = sqlite3.connect(
            f"{Path(path).resolve().as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            timeout=busy_timeout,
            check_same_thread=False,
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SqliteEngine:
    """One SQLite file: the writer's connection, held; a read connection of its own per read."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = connect(path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {path}: {exc}") from None

    @contextmanager
    def writer(self) -> Iterator[Connection]:
        yield self.conn

    def begin(self, conn: Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def ddl(self, statement: str) -> str:
        return statement

    def rollback(self, conn: Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        try:
            conn = connect(self.path, readonly=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None
        try:
            yield conn
        finally:
            conn.close()

    def close(self) -> None:
        self.conn.close()


class Database:
    """The stores' database with a writer thread. Use as `with Database(target) as db:` (or `async with`)."""

    def __init__(self, target: str | Path | StoreUrl, *, max_batch: int = 256, waiters: int = 64) -> None:
        self.url = parse_store(target)
        self.max_batch = max_batch
        self._waiters = ThreadPoolExecutor(max_workers=waiters, thread_name_prefix="db-wait")
        """Threads for calls that block on a commit (`in_thread`); started as needed."""
        self.batches = 0
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._hooks: list[Callable[[Connection], None]] = []
        self._before: list[Callable[[Connection], None]] = []
        self._rollback: list[Callable[[Connection | None], None]] = []
        self._thread: threading.Thread | None = None
        self._engine: SqliteEngine | PostgresEngine | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The SQLite file (`StoreError` for a PostgreSQL database, which has none)."""
        if self.url.path is None:
            raise StoreError(f"{self.url} is a PostgreSQL database, not a file")
        return self.url.path

    @property
    def dialect(self) -> str:
        """`sqlite` or `postgresql`: the few statements that differ (`audit`'s table) go by it."""
        return "postgresql" if self.url.postgres else "sqlite"

    # lifecycle ---------------------------------------------------------------------------

    def open(self) -> Database:
        if self._thread is not None:
            return self
        if self.url.postgres:
            from .postgres import PostgresEngine  # psycopg is loaded only for a PostgreSQL database

            self._engine = PostgresEngine(self.url)
        else:
            self._engine = SqliteEngine(self.path)
        self._thread = threading.Thread(target=self._write_loop, name=f"db-writer:{self.url}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Finish the queued jobs, stop the writer and close the file."""
        with self._lock:
            if self._thread is None or self._closed:
                return
            self._closed = True
            self._jobs.put(_STOP)
        self._thread.join()
        self._waiters.shutdown(wait=False)
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> Database:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Database:
        return self.open()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    # writing -----------------------------------------------------------------------------

    def ensure_schema(self, statements: Sequence[str]) -> None:
        """Create tables and indexes (idempotent statements), in one transaction."""

        def create(conn: Connection) -> None:
            for statement in statements:
                conn.execute(self._engine.ddl(statement) if self._engine is not None else statement)

        self.call(create)

    def before_batch(self, hook: Callable[[Connection], None]) -> None:
        """Run `hook` at the start of every batch's transaction, before its jobs."""
        self._before.append(hook)

    def on_rollback(self, hook: Callable[[Connection | None], None]) -> None:
        """Run `hook` after a job's writes were rolled back (with the connection, still in the batch's
        transaction), or after a whole batch was (with None)."""
        self._rollback.append(hook)

    def after_batch(self, hook: Callable[[Connection], None]) -> None:
        """Run `hook` in every batch's transaction after its jobs; if it raises, the batch fails."""
        self._hooks.append(hook)

    def submit(self, job: Job[T]) -> Future[T]:
        """Queue `job`; its future resolves once the transaction that ran it is committed."""
        future: Future[T] = Future()
        with self._lock:  # a job is queued before the writer's stop, or refused
            if self._thread is None or self._closed:
                raise StoreError(f"the database {self.url} is not open")
            self._jobs.put((job, future))
        return future

    def call(self, job: Job[T]) -> T:
        """Run `job` in a transaction and wait for its commit (from any thread but the writer's)."""
        return self.submit(job).result()

    async def run(self, job: Job[T]) -> T:
        """Run `job` in a transaction and await its commit."""
        return await asyncio.wrap_future(self.submit(job))

    async def in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await `fn(*args, **kwargs)`, a blocking call that waits on this database's commits (the
        verifier's `open`, `complete`, ...), on one of the database's waiting threads.

        Each such call holds its thread until its commit, and the writer commits what is queued then
        in one transaction: the threads waiting bound the batch. On asyncio's default pool (cores + 4,
        six here) a gateway committed at most six sessions' writes a transaction and queued the rest
        where nothing saw them: offered 200 requests/s, 300 to 500 sessions waited there for seconds
        (docs/scale.md, "Overload")."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._waiters, call)

    def _write_loop(self) -> None:
        engine = self._engine
        assert engine is not None
        while True:
            first = self._jobs.get()
            if first is _STOP:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._jobs.put(_STOP)
                    break
                batch.append(item)
            try:
                with engine.writer() as conn:
                    self._run_batch(conn, batch)
            except StoreError as exc:  # no connection: nothing of the batch was written
                for _, future in batch:
                    _settle(future, None, exc)

    def _run_batch(self, conn: Connection, batch: list[tuple[Job[Any], Future[Any]]]) -> None:
        """Run the batch in one transaction; every future is settled, whatever fails."""
        assert self._engine is not None
        done: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            self._engine.begin(conn)
            for hook in self._before:
                hook(conn)
            for job, future in batch:
                if not future.set_running_or_notify_cancel():
                    continue
                conn.execute("SAVEPOINT job")
                try:
                    result = job(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")  # if SQLite ended the transaction, this fails the batch
                    conn.execute("RELEASE job")
                    for undo in self._rollback:
                        undo(conn)
                    done.append((future, None, exc if isinstance(exc, DeviceSdkError) else _store_error(exc)))
                else:
                    conn.execute("RELEASE job")
                    done.append((future, result, None))
            for hook in self._hooks:
                hook(conn)
            conn.execute("COMMIT")
            self.batches += 1
        except BaseException as exc:
            log.exception("a batch of %d writes to %s failed", len(batch), self.url)
            with contextlib.suppress(Exception):
                self._engine.rollback(conn)
            for undo in self._rollback:
                undo(None)
            failure = StoreError(f"could not commit to {self.url}: {exc}")
            for _, future in batch:  # nothing of the batch was written
                _settle(future, None, failure)
            return
        for future, result, error in done:
            _settle(future, result, error)

    # reading -----------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read connection of its own (it sees every committed write), closed afterwards."""
        if self._closed or self._engine is None:
            raise StoreError(f"the database {self.url} is not open")
        with self._engine.reading() as conn:
            yield conn


def _store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        return StoreError(f"database error: {exc}")
    return exc


def _settle(future: Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
