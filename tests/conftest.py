"""Brokers for the tests: the embedded amqtt broker in process, and a private Mosquitto process."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.bus.url import BrokerUrl
from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.pg_server import PostgresServer, postgres_binaries

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The package's launcher (`PostgresServer`: initdb and pg_ctl in a temporary data directory, run
    as `postgres` when the tests run as root: initdb refuses root), stopped at the end of the session."""
    if postgres_binaries() is None:
        if os.environ.get("CI"):
            pytest.fail("postgresql is missing in CI: ./dev test installs it with apt-get")
        pytest.skip("PostgreSQL is not installed (./dev test installs it: apt-get install postgresql)")
    server = PostgresServer()
    try:
        server.boot()
        yield server
    finally:
        server.close()


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
