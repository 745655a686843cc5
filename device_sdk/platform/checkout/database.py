"""One SQLite file, written by one thread with group commit.

Every write is a job: a function of the connection, run inside a transaction. The writer thread
takes every job that is waiting, runs each under its own savepoint (a job that raises rolls back
alone), runs the batch hooks (the audit log signs a checkpoint there), and commits once with
`synchronous=FULL`: each job's effects are on disk when its future resolves, and one fsync serves
the whole batch. Several processes may open the same file; SQLite serialises their transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from device_sdk.protocol.errors import DeviceSdkError, StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], T]
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


class Database:
    """A SQLite file with a writer thread. Use as `with Database(path) as db:` (or `async with`)."""

    def __init__(self, path: str | Path, *, max_batch: int = 256) -> None:
        self.path = Path(path)
        self.max_batch = max_batch
        self.batches = 0
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._hooks: list[Callable[[sqlite3.Connection], None]] = []
        self._before: list[Callable[[sqlite3.Connection], None]] = []
        self._rollback: list[Callable[[sqlite3.Connection | None], None]] = []
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._lock = threading.Lock()

    # lifecycle ---------------------------------------------------------------------------

    def open(self) -> Database:
        if self._thread is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = connect(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        self._thread = threading.Thread(target=self._write_loop, name=f"db-writer:{self.path.name}", daemon=True)
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
        if self._conn is not None:
            self._conn.close()

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

        def create(conn: sqlite3.Connection) -> None:
            for statement in statements:
                conn.execute(statement)

        self.call(create)

    def before_batch(self, hook: Callable[[sqlite3.Connection], None]) -> None:
        """Run `hook` at the start of every batch's transaction, before its jobs."""
        self._before.append(hook)

    def on_rollback(self, hook: Callable[[sqlite3.Connection | None], None]) -> None:
        """Run `hook` after a job's writes were rolled back (with the connection, still in the batch's
        transaction), or after a whole batch was (with None)."""
        self._rollback.append(hook)

    def after_batch(self, hook: Callable[[sqlite3.Connection], None]) -> None:
        """Run `hook` in every batch's transaction after its jobs; if it raises, the batch fails."""
        self._hooks.append(hook)

    def submit(self, job: Job[T]) -> Future[T]:
        """Queue `job`; its future resolves once the transaction that ran it is committed."""
        future: Future[T] = Future()
        with self._lock:  # a job is queued before the writer's stop, or refused
            if self._thread is None or self._closed:
                raise StoreError(f"the database {self.path} is not open")
            self._jobs.put((job, future))
        return future

    def call(self, job: Job[T]) -> T:
        """Run `job` in a transaction and wait for its commit (from any thread but the writer's)."""
        return self.submit(job).result()

    async def run(self, job: Job[T]) -> T:
        """Run `job` in a transaction and await its commit."""
        return await asyncio.wrap_future(self.submit(job))

    def _write_loop(self) -> None:
        conn = self._conn
        assert conn is not None
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
            self._run_batch(conn, batch)

    def _run_batch(self, conn: sqlite3.Connection, batch: list[tuple[Job[Any], Future[Any]]]) -> None:
        """Run the batch in one transaction; every future is settled, whatever fails."""
        done: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
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
            log.exception("a batch of %d writes to %s failed", len(batch), self.path)
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            for undo in self._rollback:
                undo(None)
            failure = StoreError(f"could not commit to {self.path}: {exc}")
            for _, future in batch:  # nothing of the batch was written
                _settle(future, None, failure)
            return
        for future, result, error in done:
            _settle(future, result, error)

    # reading -----------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read connection of its own (it sees every committed write), closed afterwards."""
        if self._closed:
            raise StoreError(f"the database {self.path} is closed")
        try:
            conn = connect(self.path, readonly=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None
        try:
            yield conn
        finally:
            conn.close()


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
