"""`device-sdk gateway` as a real process on a real Mosquitto: a device orders through it, its HTTP
endpoints answer with the counters moved, and a SIGTERM mid-session drains it (issue 19)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.bus.mqtt import MqttBus
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.audit import trail, verify_log
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.profiles import DeviceProfile
from device_sdk.platform.checkout.registry import DeviceRegistry
from device_sdk.platform.daemon.config import GatewayConfig
from device_sdk.protocol.errors import ConfigError, ErrorCode, RemoteError
from device_sdk.protocol.fields import Decision, DeviceKind, Outcome
from device_sdk.protocol.messages import GatewayStatus, decode
from device_sdk.protocol.topics import Topics


class GatewayProcess:
    """`device-sdk gateway --config FILE` in a process of its own; its JSON log lines, as they come."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.lines: list[dict[str, Any]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new = asyncio.Event()

    async def start(self) -> dict[str, Any]:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "device_sdk", "gateway", "--config", str(self.config),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return await self.line("ready")

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))
            self._new.set()

    async def line(self, msg: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first log line whose message is `msg` (waiting for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if line.get("msg") == msg:
                        return line
                assert self.proc is not None
                if self.proc.returncode is not None and self._reader is not None and self._reader.done():
                    raise AssertionError(f"the gateway exited {self.proc.returncode} before {msg!r}: {self.lines}")
                self._new.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._new.wait()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


@pytest.fixture
async def service(mosquitto: MosquittoServer, tmp_path: Path) -> AsyncIterator[tuple[GatewayProcess, Path, SigningKey]]:
    database = tmp_path / "shop.db"
    key = SigningKey.generate()
    with Database(database) as db:  # the device is provisioned before the service starts
        registry = DeviceRegistry(db)
        registry.rotate("speaker-1", key.public)
        registry.describe("speaker-1", DeviceProfile.of(DeviceKind.SPEAKER))
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "gw-svc"\ndrain_seconds = 30\n'
        f'[broker]\nurl = "{mosquitto.url.argument()}"\n'
        f'[database]\nurl = "{database}"\naudience = "shop-checkout:demo"\n'
        f'[agent]\ncore = "simulators.agent_core:CatalogAgent"\n'
        f'[http]\nhost = "127.0.0.1"\nport = 0\n'
        f"[limits]\nopen_checkouts = 4\n",
        encoding="utf-8",
    )
    process = GatewayProcess(config)
    try:
        yield process, database, key
    finally:
        await process.close()


async def get(session: aiohttp.ClientSession, base: str, path: str) -> tuple[int, str]:
    async with session.get(base + path) as response:
        return response.status, await response.text()


def metric(text: str, name: str) -> float:
    """The value of the sample `name` (with its labels, if any) in Prometheus text."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in the metrics")


async def test_issue_19_the_gateway_service_orders_reports_and_drains_on_sigterm(
    service: tuple[GatewayProcess, Path, SigningKey], mosquitto: MosquittoServer
) -> None:
    process, database, key = service
    ready = await process.start()
    assert ready["gateway_id"] == "gw-svc" and ready["level"] == "info"  # structured JSON logs
    base = f"http://{ready['http']}"
    async with aiohttp.ClientSession() as http, DeviceClient(mosquitto.url, "speaker-1", key=key) as device:
        offer = await device.ask("buy two packs of AA batteries")
        result = await device.answer(offer, Decision.CONFIRM, heard="yes")
        assert result.outcome is Outcome.ORDERED and result.order_id

        assert await get(http, base, "/healthz") == (200, "ok\n")
        assert (await get(http, base, "/readyz"))[0] == 200
        status, text = await get(http, base, "/metrics")
        assert status == 200
        assert metric(text, "device_sdk_gateway_requests_total") == 1
        assert metric(text, "device_sdk_gateway_proposals_total") == 1
        assert metric(text, 'device_sdk_gateway_confirmations_total{decision="confirm"}') == 1
        assert metric(text, "device_sdk_gateway_orders_total") == 1
        assert metric(text, "device_sdk_gateway_proposal_seconds_count") == 1
        assert metric(text, "device_sdk_gateway_order_seconds_count") == 1
        assert 0 <= metric(text, "device_sdk_gateway_loop_lag_seconds") < 0.25  # an idle service takes sessions

        second = await device.ask("buy a bottle of milk")  # a session open when the signal comes
        assert process.proc is not None
        process.proc.send_signal(signal.SIGTERM)
        draining = await process.line("draining")
        assert draining["open"] == 1
        assert (await get(http, base, "/readyz"))[0] == 503
        with pytest.raises(RemoteError) as refused:  # no new session while draining
            await device.ask("buy a bottle of milk", timeout=10.0)
        assert refused.value.code is ErrorCode.BUSY
        text = (await get(http, base, "/metrics"))[1]  # still served while draining
        assert metric(text, 'device_sdk_gateway_refusals_total{code="busy"}') == 1
        assert metric(text, "device_sdk_gateway_sessions_open") == 1
        ended = await device.answer(second, Decision.DECLINE, heard="no")
        assert ended.outcome is Outcome.DECLINED
        async with asyncio.timeout(30.0):
            assert await process.proc.wait() == 0
    assert (await process.line("drained"))["left_open"] == 0

    topics = Topics()
    async with MqttBus(mosquitto.url, "status-reader") as bus:
        inbox = await bus.subscribe(topics.gateway_status("gw-svc"))
        retained = await inbox.get(timeout=10.0)
    status_message = decode(retained.payload)
    assert retained.retain and isinstance(status_message, GatewayStatus) and status_message.online is False
    assert verify_log(database).ok
    kinds = [r["kind"] for r in trail(database, second.request.session_id)]
    assert kinds[-1] == "result"  # the drained session's end was committed before the process exited


def test_issue_19_a_gateway_config_with_an_unknown_setting_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[broker]\nurl = "mqtt://127.0.0.1:1883"\n[database]\nurl = "x.db"\nport = 5\n')
    with pytest.raises(ConfigError, match="no setting 'port'"):
        GatewayConfig.load(config, env={})
    config.write_text('[broker]\nurl = "mqtt://gw@127.0.0.1:1883"\n[database]\nurl = "x.db"\n')
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    env = {"DEVICE_SDK_BROKER_PASSWORD_FILE": str(secret), "DEVICE_SDK_DATABASE_URL": str(tmp_path / "y.db")}
    loaded = GatewayConfig.load(config, env=env)
    assert loaded.broker.password == "s3cret" and loaded.database == str(tmp_path / "y.db")
    assert "s3cret" not in json.dumps(loaded.described())


def test_issue_19_the_sample_gateway_config_loads(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    sample = Path(__file__).parent.parent / "examples" / "gateway.toml"
    loaded = GatewayConfig.load(sample, env={"DEVICE_SDK_BROKER_PASSWORD_FILE": str(secret)})
    assert loaded.gateway_id == "gw-1" and loaded.broker.tls and loaded.http_host == "127.0.0.1"
    assert loaded.limits.open_checkouts == 4 and loaded.drain_seconds == 30.0
    assert loaded.capacity.max_lag == 0.25 and loaded.capacity.max_active == 512
    with pytest.raises(ConfigError, match="max_active"):
        GatewayConfig.of({"broker": {"url": "mqtt://127.0.0.1:1"}, "database": {"url": "x.db"},
                          "capacity": {"max_active": 0}}, "test")  # fmt: skip
