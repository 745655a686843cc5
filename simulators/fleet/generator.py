"""`device-sdk bench fleet`: N simulated devices in several processes against G real gateway
processes (`device-sdk serve`) on one broker and one store, for a measured window, with faults.

With no broker URL it starts Mosquitto (`set_tcp_nodelay true`) on a free loopback port; with no
database, a PostgreSQL of its own (`PostgresServer`: a temporary data directory, a free loopback
port) shared by the gateway processes; `database="sqlite"` runs them on a SQLite file in a temporary
directory instead. Each device has its own Ed25519 key, enrolled before the gateways start, and its
kind's profile (a mix of speakers, glasses and phones). The faults happen at their second of the
window: `kill_gateway_at` SIGKILLs the first gateway, `restart_broker_at` kills the broker and starts
it again on its port, `db_pause_at` stops the bench's PostgreSQL for `pause` seconds (every connection
cut) and starts it again (on SQLite: holds the store's write lock for `pause` seconds). Afterwards
every confirmation and decline is checked against the store and the merchant (`report.reconcile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from device_sdk.bus.mosquitto import MosquittoServer, free_port
from device_sdk.bus.nats import NatsCluster
from device_sdk.bus.password import PASSWORD_ENV
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.pg_server import PostgresServer
from device_sdk.platform.checkout.profiles import DeviceProfile
from device_sdk.platform.checkout.registry import DeviceRegistry
from device_sdk.protocol.errors import BusError, ConfigError, StoreError
from device_sdk.protocol.fields import DeviceKind

from .claims import ClaimWatch
from .devices import raise_open_files
from .gateways import GatewayProcess, cpu_seconds, rss_mb
from .report import in_window, p95_by_minute, percentiles, read_ledger, reconcile

BROKER_CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_queued_messages 100000
max_keepalive 120
"""
POLICY = """\
# the fleet orders far more than one household: no velocity or daily limit in the way
orders_per_minute = 1000000
daily_cap_minor = {CNY = 1000000000000}
"""
MIX = ((DeviceKind.SPEAKER, 5), (DeviceKind.GLASSES, 3), (DeviceKind.PHONE, 2))
"""Of every ten devices: five speakers, three pairs of glasses, two phones."""
MOST_DEVICES, MOST_SECONDS = 20_000, 3_600
PER_PROCESS = 2_500


@dataclass
class FleetOptions:
    devices: int = 100
    gateways: int = 2
    rate: float | None = 10.0
    """Requests a second offered across the fleet (Poisson); None: as fast as the devices go."""
    seconds: float = 20.0
    broker: BrokerUrl | None = None
    nats: int = 0
    """Nodes of a NATS JetStream cluster to start instead of Mosquitto (0: Mosquitto); the gateways and
    the device processes are spread over its nodes, so messages cross nodes."""
    database: str | None = None
    """The gateways' store: None, a PostgreSQL the bench starts; `sqlite`, a SQLite file it makes; else
    a SQLite path or a `postgresql://` URL of one's own (never stopped by the bench)."""
    kill_gateway_at: float | None = None
    restart_broker_at: float | None = None
    db_pause_at: float | None = None
    pause: float = 3.0
    processes: int | None = None
    heartbeat: float | None = None
    """Seconds between a device's pings (None: the DeviceClient's default)."""
    confirm_share: float = 0.7
    ramp: float = 500.0
    """New connections a second across the fleet."""
    idle_seconds: float = 35.0
    """How long idle CPU is measured: longer than a heartbeat (30 s), so every device pings in it."""
    drain: float = 60.0
    seed: int = 19

    def check(self) -> None:
        if not 1 <= self.devices <= MOST_DEVICES or not 1 <= self.gateways <= 16:
            raise ConfigError(f"--devices 1..{MOST_DEVICES} and --gateways 1..16")
        if not 0 < self.seconds <= MOST_SECONDS or (self.rate is not None and not 0 < self.rate <= 5_000):
            raise ConfigError(f"--seconds 0..{MOST_SECONDS} and --rate 0..5000 (or max)")
        if self.broker is not None and not _loopback(self.broker.host):
            raise ConfigError("the fleet bench sends load to loopback addresses only")
        if self.nats and (self.broker is not None or not 2 <= self.nats <= 5):
            raise ConfigError("--nats N starts a cluster of 2 to 5 nodes itself (no --broker)")
        if self.broker is not None and self.restart_broker_at is not None:
            raise ConfigError("--restart-broker-at needs the broker the bench starts itself (no --broker)")
        if self.kill_gateway_at is not None and self.gateways < 2:
            raise ConfigError("--kill-gateway-at needs at least two gateways: one to kill, one to take over")
        if self.given_postgres and self.db_pause_at is not None:
            raise ConfigError("--db-pause-at stops the PostgreSQL the bench starts itself (no --database URL): "
                              "a database of one's own is never stopped")  # fmt: skip

    @property
    def given_postgres(self) -> bool:
        return (self.database or "").strip().lower().startswith(("postgresql://", "postgres://"))


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


async def run_bench_fleet(options: FleetOptions) -> dict[str, Any]:
    options.check()
    pg = _postgres() if options.database is None else None  # nothing started yet: only found
    files = raise_open_files()
    with tempfile.TemporaryDirectory(prefix="device-sdk-fleet-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            broker: MosquittoServer | NatsCluster | None = None
            if options.nats:
                broker = await stack.enter_async_context(NatsCluster(options.nats))
                urls = broker.urls
            elif options.broker is None:
                broker = MosquittoServer(config=BROKER_CONFIG.format(port=free_port()))
                urls = [(await stack.enter_async_context(broker)).url]
            else:
                urls = [options.broker]
            if pg is not None:
                await stack.enter_async_context(pg)
                await asyncio.to_thread(pg.admin, "CREATE DATABASE fleet")
                database = pg.url("fleet")
            else:
                database = str(Path(tmp) / "shop.db") if options.database in (None, "sqlite") else options.database
            fleet = Fleet(options, urls, database, Path(tmp), broker, pg)
            report = await fleet.run()
    return {**report, "open_files_limit": files, "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}


class Fleet:
    """One run: the keys, the gateways, the device processes, the faults and the figures."""

    def __init__(
        self,
        options: FleetOptions,
        urls: list[BrokerUrl],
        database: str,
        tmp: Path,
        broker: MosquittoServer | NatsCluster | None,
        pg: PostgresServer | None = None,
    ) -> None:
        self.o = options
        self.urls = urls
        """The broker's addresses: one, or each node of a NATS cluster."""
        self.url = urls[0]
        self.database = database
        self.tmp = tmp
        self.broker = broker
        self.pg = pg
        """The PostgreSQL the bench started (None: a SQLite store, or a database given by URL)."""
        self.state = tmp / "state" if pg is not None else None
        """The gateways' state directory (the audit key and the merchant's book of a PostgreSQL store)."""
        self.gateways: list[GatewayProcess] = []
        self.children: list[asyncio.subprocess.Process] = []
        self.faults: dict[str, Any] = {}
        self.rss_by_minute: list[float | None] = []
        self.cpu: dict[str, float] = {}
        self._stack = contextlib.AsyncExitStack()

    def _home(self, n: int) -> BrokerUrl:
        """Node n's address with the cluster's other nodes after it (`BrokerUrl.nodes`), so a client
        whose node dies moves to the next at once; the broker's URL when there is one node."""
        k = n % len(self.urls)
        first, *rest = self.urls[k:] + self.urls[:k]
        return replace(first, others=tuple((url.host, url.port) for url in rest))

    async def run(self) -> dict[str, Any]:
        devices = await self._enroll()
        policy = self.tmp / "policy.toml"
        policy.write_text(POLICY)
        for n in range(self.o.gateways):
            url = self._home(n)
            env = {"DEVICE_SDK_STATE": str(self.state)} if self.state is not None else None
            gateway = GatewayProcess(url, self.database, policy, self.tmp / f"gateway-{n}.log", env)
            self.gateways.append(gateway)
        try:
            self.watch = await self._stack.enter_async_context(ClaimWatch(self._home(0)))
            await asyncio.gather(*(g.start() for g in self.gateways))
            await asyncio.sleep(1.0)
            base_rss = [rss_mb(g.pid) or 0.0 for g in self.gateways]
            connect_started = time.monotonic()
            ready = await self._start_devices(devices)
            connect_s = time.monotonic() - connect_started
            idle = await self._idle()
            idle_rss = [rss_mb(g.pid) or 0.0 for g in self.gateways]
            reports = await self._window()
        finally:
            await self._stop()
            await self._stack.aclose()
        return self._figures(ready, reports, base_rss, idle_rss, idle, connect_s)

    async def _enroll(self) -> list[dict[str, Any]]:
        """A key and a profile for each device, enrolled in the store; the devices' list for their processes."""
        kinds = [kind for kind, share in MIX for _ in range(share)]
        devices = []
        for n in range(self.o.devices):
            kind = kinds[n % len(kinds)]
            key = SigningKey.generate()
            raw = key.private.private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
            devices.append({"id": f"fleet-{kind.value}-{n}", "kind": kind.value, "key": raw.hex(), "signer": key})
        async with Database(self.database) as db:
            registry = DeviceRegistry(db)

            def enroll(device: dict[str, Any]) -> None:
                registry.rotate(device["id"], device.pop("signer").public)
                registry.describe(device["id"], DeviceProfile.of(device["kind"]))

            for start in range(0, len(devices), 256):
                await asyncio.gather(*(asyncio.to_thread(enroll, d) for d in devices[start : start + 256]))
        return devices

    async def _start_devices(self, devices: list[dict[str, Any]]) -> dict[str, int]:
        count = self.o.processes or max(2, math.ceil(len(devices) / PER_PROCESS))
        count = min(count, len(devices))
        env = {**os.environ, PASSWORD_ENV: self.url.password} if self.url.password else None
        for n in range(count):
            share = devices[n::count]
            config = {
                "broker": self._home(n).argument(), "devices": share, "seed": self.o.seed + n,
                "rate": None if self.o.rate is None else self.o.rate / count, "seconds": self.o.seconds,
                "workers": max(1, min(64, len(share) // 4)), "heartbeat": self.o.heartbeat,
                "confirm_share": self.o.confirm_share, "ramp": self.o.ramp / count, "drain": self.o.drain,
                "settle": 60.0,
            }  # fmt: skip
            path = self.tmp / f"devices-{n}.json"
            path.touch(mode=0o600)
            path.write_text(json.dumps(config))
            with (self.tmp / f"devices-{n}.log").open("ab") as log:  # a file, not a pipe nobody reads
                self.children.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "simulators.fleet.devices", str(path), env=env,
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, limit=256 * 1024 * 1024,
                    )
                )  # fmt: skip
        ramp = len(devices) / self.o.ramp + 120
        lines = await asyncio.gather(*(self._line(child, ramp) for child in self.children))
        return {
            "connected": sum(int(line["connected"]) for line in lines),
            "alive": sum(int(line["alive"]) for line in lines),
        }

    async def _line(self, child: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
        assert child.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await child.stdout.readline()
        except TimeoutError:
            raise BusError(f"a device process said nothing within {timeout:.0f} s") from None
        if not line:
            log = (self.tmp / f"devices-{self.children.index(child)}.log").read_text(errors="replace")
            raise BusError(f"a device process ended early: {log[-800:]}")
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    async def _idle(self) -> dict[str, float | None]:
        """The gateways' CPU with every device connected and nobody speaking, % of one core each."""
        await asyncio.sleep(1.0)
        before = [cpu_seconds(g.pid) or 0.0 for g in self.gateways]
        started = time.monotonic()
        await asyncio.sleep(self.o.idle_seconds)
        elapsed = time.monotonic() - started
        used = [(cpu_seconds(g.pid) or 0.0) - b for g, b in zip(self.gateways, before, strict=True)]
        broker = self.broker.pid if isinstance(self.broker, MosquittoServer) else None
        held = rss_mb(broker) if broker is not None else None
        return {
            "gateway_idle_cpu_pct": round(100 * sum(used) / elapsed / len(used), 1),
            "broker_idle_rss_mb": round(held, 1) if held is not None else None,
        }

    async def _window(self) -> list[dict[str, Any]]:
        t0 = time.time()
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write(f"go {t0}\n".encode())
            await child.stdin.drain()
        faults = [asyncio.ensure_future(self._fault(t0)), asyncio.ensure_future(self._sample_rss(t0)),
                  asyncio.ensure_future(self._cpu(t0))]  # fmt: skip
        try:
            timeout = self.o.seconds + self.o.drain + 120
            return await asyncio.gather(*(self._line(child, timeout) for child in self.children))
        finally:
            for task in faults:
                task.cancel()
            await asyncio.gather(*faults, return_exceptions=True)

    async def _fault(self, t0: float) -> None:
        """The faults asked for, each at its second of the window."""
        plan = sorted(
            (at, name)
            for name, at in (
                ("kill", self.o.kill_gateway_at),
                ("broker", self.o.restart_broker_at),
                ("db", self.o.db_pause_at),
            )
            if at is not None
        )
        for at, name in plan:
            await asyncio.sleep(max(0.0, t0 + at - time.time()))
            if name == "kill":
                self.gateways[0].kill()
                self.watch.gateway_died(self.gateways[0].gateway_id)
                self.faults["gateway_killed_at"] = round(time.time() - t0, 2)
                self.faults["devices_of_killed_gateway"] = self.watch.orphans
            elif name == "broker" and isinstance(self.broker, NatsCluster):
                node = 1 % len(self.urls)  # not the claim watcher's node
                await self.broker.stop_node(node)
                await self.broker.start_node(node)
            elif name == "broker":
                assert isinstance(self.broker, MosquittoServer)
                await self.broker.restart()
                self.faults["broker_restarted_at"] = round(time.time() - t0, 2)
            elif self.pg is not None:
                self.faults["db_paused_at"] = round(time.time() - t0, 2)
                down = await self.pg.pause(self.o.pause)
                self.faults["db_paused_s"] = self.o.pause
                self.faults["db_down_s"] = round(down, 2)
            else:
                self.faults["db_paused_at"] = round(time.time() - t0, 2)
                await asyncio.to_thread(_hold_write_lock, self.database, self.o.pause)
                self.faults["db_paused_s"] = self.o.pause

    async def _cpu(self, t0: float) -> None:
        """CPU over the window, % of one core: each live gateway's (mean), the broker's, all device processes'."""
        parts = {
            "gateway": [g.pid for g in self.gateways],
            "broker": [pid]
            if isinstance(self.broker, MosquittoServer) and (pid := self.broker.pid) is not None
            else [],
            "devices": [child.pid for child in self.children],
        }
        before = {pid: cpu_seconds(pid) for pids in parts.values() for pid in pids}
        await asyncio.sleep(max(0.0, t0 + self.o.seconds - time.time()))
        elapsed = time.time() - t0
        for name, pids in parts.items():
            used = [(end - start) for pid in pids if (start := before[pid]) is not None
                    and (end := cpu_seconds(pid)) is not None]  # fmt: skip
            if used:
                total = sum(used) / (len(used) if name == "gateway" else 1)
                self.cpu[f"{name}_cpu_pct"] = round(100 * total / elapsed, 1)

    async def _sample_rss(self, t0: float) -> None:
        """Each minute of the window: the live gateways' mean resident memory (MB)."""
        minute = 0
        while True:
            await asyncio.sleep(max(0.0, t0 + 60 * (minute + 1) - time.time()))
            minute += 1
            live = [m for g in self.gateways if g.alive and (m := rss_mb(g.pid)) is not None]
            self.rss_by_minute.append(round(sum(live) / len(live), 1) if live else None)

    async def _stop(self) -> None:
        for child in self.children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.terminate()
        for child in self.children:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    await child.wait()
            if child.returncode is None:
                child.kill()
                await child.wait()
        self.live_rss = [rss_mb(g.pid) for g in self.gateways if g.alive]
        await self._settle()
        await asyncio.gather(*(g.stop() for g in self.gateways))

    async def _settle(self, most: float = 30.0) -> None:
        """Before the gateways stop: wait (up to `most` s) until they are quiet, their queued writes done,
        as a gateway that goes on running would finish them."""
        deadline = time.monotonic() + most
        while time.monotonic() < deadline:
            live = [g for g in self.gateways if g.alive]
            before = [cpu_seconds(g.pid) or 0.0 for g in live]
            await asyncio.sleep(1.0)
            if all((cpu_seconds(g.pid) or 0.0) - b < 0.05 for g, b in zip(live, before, strict=True)):
                return

    def _figures(
        self,
        ready: dict[str, int],
        reports: list[dict[str, Any]],
        base_rss: list[float],
        idle_rss: list[float],
        idle: dict[str, float | None],
        connect_s: float,
    ) -> dict[str, Any]:
        merged: dict[str, Any] = {"proposals": [], "orders": [], "confirmed": [], "declined": [], "down": []}
        errors: dict[str, int] = {}
        for report in reports:
            for key in merged:
                merged[key].extend(report[key])
            for code, count in report["errors"].items():
                errors[code] = errors.get(code, 0) + count
        window = self.o.seconds
        fates = reconcile(merged["confirmed"], merged["declined"], read_ledger(self.database, self.state))
        live = [m for m in self.live_rss if m is not None]
        grown = sum(i - b for i, b in zip(idle_rss, base_rss, strict=True))
        return {
            "devices": self.o.devices,
            "gateways": self.o.gateways,
            "device_processes": len(self.children),
            "rate_offered": self.o.rate if self.o.rate is not None else "max",
            "seconds": window,
            "devices_connected": ready["connected"],
            "devices_with_controller": ready["alive"],
            "connect_s": round(connect_s, 1),
            "requests_offered": sum(r["arrivals"] for r in reports),
            "requests_not_offered_busy": sum(r["busy"] for r in reports),
            "requests_per_s": round(len(in_window(merged["proposals"], window)) / window, 1),
            "proposal_ms": percentiles(in_window(merged["proposals"], window)),
            "order_ms": percentiles([ms for _, ms in merged["orders"]]),
            "proposal_ms_by_minute": p95_by_minute(merged["proposals"], window),
            "memory_mb_per_gateway": round(sum(live) / len(live), 1) if live else None,
            "rss_mb_by_minute": self.rss_by_minute,
            "kb_per_idle_device": round(grown * 1024 / self.o.devices, 2),
            **idle,
            **self.cpu,
            **fates,
            "gateways_killed": sum(g.killed for g in self.gateways),
            **self.faults,
            "reconnect_s_max": max([*merged["down"], *self.watch.takeovers], default=0.0),
            "takeover_s_max": max(self.watch.takeovers, default=None),
            "devices_not_taken_over": self.watch.orphans,
            "devices_down_at_end": sum(r["still_down"] for r in reports),
            "errors": errors,
            "broker": (
                f"nats ({len(self.urls)} nodes, started)"
                if isinstance(self.broker, NatsCluster)
                else "mosquitto (started)"
                if self.broker is not None
                else str(self.url)
            ),
            "database": {None: "postgresql (started)", "sqlite": "sqlite (started)"}.get(self.o.database, "given"),
        }


def _postgres() -> PostgresServer:
    """The bench's own PostgreSQL (not started yet); a clear error when it is not installed."""
    try:
        return PostgresServer()
    except StoreError as exc:
        raise StoreError(f"{exc.text}; --database sqlite runs the fleet on a SQLite file") from None


def _hold_write_lock(database: str, seconds: float) -> None:
    """Pause the SQLite store's writers: hold its write lock for `seconds` (readers go on)."""
    conn = sqlite3.connect(database, timeout=30.0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()
