"""Brokers for the tests: the embedded amqtt broker in process, and a private Mosquitto process."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.bus.url import BrokerUrl
from device_sdk.device.client import DeviceClient

if TYPE_CHECKING:
    from simulators.scenario import ShopBackend


def mosquitto_or_skip() -> None:
    if shutil.which("mosquitto") or os.path.exists("/usr/sbin/mosquitto"):
        return
    if os.environ.get("CI"):
        pytest.fail("mosquitto is missing in CI: ./dev test installs it with apt-get")
    pytest.skip("mosquitto is not installed (./dev test installs it: apt-get install mosquitto)")


class Restartable(Protocol):
    @property
    def url(self) -> BrokerUrl: ...

    async def restart(self) -> None: ...

    async def stop(self) -> None: ...

    async def start(self) -> None: ...


@dataclass
class EmbeddedRestartable:
    broker: EmbeddedBroker

    @property
    def url(self) -> BrokerUrl:
        return self.broker.url

    async def restart(self) -> None:
        await self.broker.stop()
        await self.broker.start()

    async def stop(self) -> None:
        await self.broker.stop()

    async def start(self) -> None:
        await self.broker.start()


@pytest.fixture
async def embedded() -> AsyncIterator[EmbeddedRestartable]:
    async with EmbeddedBroker() as broker:
        yield EmbeddedRestartable(broker)


@pytest.fixture
async def mosquitto() -> AsyncIterator[MosquittoServer]:
    mosquitto_or_skip()
    async with MosquittoServer() as server:
        yield server


@pytest.fixture(params=["embedded", "mosquitto"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Restartable]:
    """Each test that takes `broker` runs once on each broker."""
    if request.param == "embedded":
        async with EmbeddedBroker() as embedded_broker:
            yield EmbeddedRestartable(embedded_broker)
    else:
        mosquitto_or_skip()
        async with MosquittoServer() as server:
            yield server


def keyed(shop: ShopBackend, broker: Restartable, device_id: str = "speaker-1", **kw: Any) -> DeviceClient:
    """A device with a signing key of its own, enrolled with the shop's verifier."""
    return DeviceClient(broker.url, device_id, key=shop.provision(device_id), **kw)


# PostgreSQL: one private server for the session, a fresh database per test -------------------------


@dataclass
class PostgresServer:
    """A PostgreSQL of the tests' own (Debian's `postgresql` binaries), on a free loopback port."""

    port: int
    user: str = "app"
    pg_ctl: list[str] = field(default_factory=list)
    """`pg_ctl -D DATA` (as the `postgres` user when the tests run as root)."""

    def restart(self) -> None:
        """Stop the server at once (every connection cut) and start it again."""
        subprocess.run([*self.pg_ctl, "-m", "immediate", "-w", "restart"], check=True, capture_output=True,
                       timeout=120)  # fmt: skip

    def url(self, dbname: str, user: str | None = None) -> str:
        return f"postgresql://{user or self.user}@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)


def _postgres_binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """initdb and pg_ctl in a temporary data directory (run as `postgres` when the tests run as root:
    initdb refuses root), stopped at the end of the session."""
    binaries = _postgres_binaries()
    if binaries is None:
        if os.environ.get("CI"):
            pytest.fail("postgresql is missing in CI: ./dev test installs it with apt-get")
        pytest.skip("PostgreSQL is not installed (./dev test installs it: apt-get install postgresql)")
    home = Path(tempfile.mkdtemp(prefix="device-sdk-pg-"))
    data = home / "data"
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PostgresServer(port, pg_ctl=[*run_as, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(home / "log")])
    quiet = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run([*run_as, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", server.user,
                    "-E", "UTF8", "--no-sync"], **quiet)  # fmt: skip
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*run_as, str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "log"),
                    "-w", "start"], **quiet)  # fmt: skip
    try:
        yield server
    finally:
        subprocess.run([*run_as, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store test keeps its database: each test that takes `store` runs once on a SQLite file
    and once on a fresh PostgreSQL database of the session's server."""
    if request.param == "sqlite":
        return tmp_path / "shop.db"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    # the audit key of a PostgreSQL log is kept in the state directory: the test's own
    request.getfixturevalue("monkeypatch").setenv("DEVICE_SDK_STATE", str(tmp_path / "state"))
    return server.new_database()
