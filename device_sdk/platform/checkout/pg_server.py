"""A private PostgreSQL on a free loopback port, for tests and benchmarks (Debian's `postgresql` binaries).

`initdb` makes a data directory in a temporary directory (trust authentication for `user`, on
loopback only, `fsync=off`: nothing here outlives the run), `pg_ctl` starts and stops the server.
`initdb` refuses to run as root: when the caller is root, every binary runs as the `postgres`
user (`runuser`), which Debian's package creates. A server started here is stopped and its
directory removed on the way out of `async with`; `pause(seconds)` stops it (every connection
cut, as a crash would) and starts it again on the same port with the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from device_sdk.bus.mosquitto import free_port
from device_sdk.protocol.errors import StoreError
from device_sdk.service import Service

MISSING = "PostgreSQL is not installed (Debian: apt-get install postgresql)"
INITDB = "/usr/lib/postgresql/*/bin/initdb"


def postgres_binaries() -> Path | None:
    """The newest of Debian's PostgreSQL binary directories (`/usr/lib/postgresql/N/bin`); None if none."""
    found = sorted(glob.glob(INITDB), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return Path(found[-1]).parent if found else None


class PostgresServer(Service):
    """A PostgreSQL of one's own: `start()` (initdb the first time, then `pg_ctl start`), `stop()`,
    `restart()`, `pause(seconds)`; `url(dbname)` to connect as `user`, `admin(sql)` as it,
    `new_database()` for a fresh empty database. Missing binaries raise `StoreError` at once."""

    def __init__(
        self, port: int | None = None, *, user: str = "app", binaries: Path | None = None, max_connections: int = 200
    ) -> None:
        found = binaries or postgres_binaries()
        if found is None or not (found / "pg_ctl").exists():
            raise StoreError(MISSING)
        self.binaries = found
        self.port = port or free_port()
        self.user = user
        self.max_connections = max_connections
        self.home: Path | None = None
        self.running = False
        self._run_as: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    # blocking steps (a test's fixture calls them as they are; `start`/`stop` run them in a thread)

    def boot(self) -> None:
        """Make the data directory if there is none yet, start the server, return once it accepts connections."""
        if self.home is None:
            self._initdb()
        assert self.home is not None
        options = (f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c max_connections={self.max_connections}")  # fmt: skip
        self._pg_ctl("-o", options, "-w", "start")
        self.running = True

    def halt(self, mode: str = "fast") -> None:
        """`pg_ctl stop -m MODE`: `fast` rolls back what runs and shuts down cleanly; `immediate` cuts
        everything at once (recovery on the next start). The data stays for the next `boot()`."""
        if self.home is not None and self.running:
            self.running = False
            self._pg_ctl("-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop the server at once (every connection cut) and start it again."""
        self.halt("immediate")
        self.boot()

    def close(self) -> None:
        """Stop the server (at once) and remove its directory."""
        try:
            with contextlib.suppress(StoreError):
                self.halt("immediate")
        finally:
            if self.home is not None:
                shutil.rmtree(self.home, ignore_errors=True)
                self.home = None

    def url(self, dbname: str = "postgres", user: str | None = None) -> str:
        return f"postgresql://{user or self.user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        """Run `sql` as the server's user (a superuser), outside any transaction."""
        import psycopg

        try:
            with psycopg.connect(self.url(dbname), autocommit=True) as conn:
                conn.execute(sql.encode())
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL on port {self.port}: {exc}") from None

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def log(self) -> str:
        """What the server wrote to its log so far."""
        if self.home is None:
            return ""
        try:
            return (self.home / "log").read_text(errors="replace")
        except OSError:
            return ""

    # the Service

    async def start(self) -> None:
        await asyncio.to_thread(self.boot)

    async def stop(self) -> None:
        await asyncio.to_thread(self.halt)

    async def pause(self, seconds: float, mode: str = "immediate") -> float:
        """Stop the server (`mode`: every connection cut at once by default), wait `seconds`, start it
        again on the same port with the same data; the seconds it did not accept connections."""
        started = time.monotonic()
        await asyncio.to_thread(self.halt, mode)
        await asyncio.sleep(seconds)
        await asyncio.to_thread(self.boot)
        return time.monotonic() - started

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)

    # inside

    def _initdb(self) -> None:
        home = Path(tempfile.mkdtemp(prefix="device-sdk-pg-"))
        if self._run_as:
            try:
                shutil.chown(home, "postgres", "postgres")
            except LookupError:
                shutil.rmtree(home, ignore_errors=True)
                raise StoreError(f"{MISSING}: there is no `postgres` user to run it as (initdb refuses root)") from None
        self.home = home
        self._run(str(self.binaries / "initdb"), "-D", str(home / "data"), "-A", "trust", "-U", self.user,
                  "-E", "UTF8", "--no-sync")  # fmt: skip

    def _pg_ctl(self, *args: str) -> None:
        assert self.home is not None
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.home / "data"), "-l", str(self.home / "log"), *args)

    def _run(self, *command: str) -> None:
        try:
            subprocess.run([*self._run_as, *command], check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError as exc:
            said = (exc.stderr or b"").decode(errors="replace").strip() or self.log()[-800:]
            raise StoreError(f"{Path(command[0]).name} failed: {said}") from None
        except (subprocess.TimeoutExpired, OSError) as exc:
            raise StoreError(f"{Path(command[0]).name} failed: {exc}") from None
