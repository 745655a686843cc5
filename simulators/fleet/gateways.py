"""The fleet's gateway processes: real `device-sdk serve` processes on one broker and one store,
and what /proc says about them (resident memory, CPU time)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from device_sdk.bus.password import PASSWORD_ENV
from device_sdk.bus.url import BrokerUrl
from device_sdk.protocol.errors import BusError

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float | None:
    """Resident memory of process `pid` in MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time that process `pid` used so far; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class GatewayProcess:
    """One `device-sdk serve` on the broker at `url`, with the store `database` and the risk policy `policy`."""

    def __init__(
        self, url: BrokerUrl, database: str, policy: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.url = url
        self.env = env or {}
        """Environment variables of its own (e.g. `DEVICE_SDK_STATE`) on top of this process's."""
        self.database = database
        self.policy = policy
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.killed = False
        self.gateway_id = ""
        self._draining: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and not self.killed

    async def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, **self.env}
        if self.url.password:
            env[PASSWORD_ENV] = self.url.password
        store = ["--database" if "://" in self.database else "--db", self.database]
        command = [sys.executable, "-m", "device_sdk", "serve", "--broker", self.url.argument(), *store,
                   "--policy", str(self.policy)]  # fmt: skip
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env
            )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await self.proc.stdout.readline()
                    if not line:
                        raise BusError(f"a gateway exited at start: {self.log.read_text(errors='replace')[-800:]}")
                    if line.startswith(b"serving devices"):  # "... as gateway ID; Ctrl-C stops"
                        self.gateway_id = line.decode().split(" as gateway ", 1)[1].split(";", 1)[0].strip()
                        break
        except TimeoutError:
            raise BusError(f"a gateway did not start within {timeout} s") from None
        self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        """Read its standard output to the end: a full pipe would stall it."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        while await self.proc.stdout.readline():
            pass

    def kill(self) -> None:
        """SIGKILL: no goodbye, no drain, no commit."""
        if self.proc is not None and self.proc.returncode is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.killed = True

    async def stop(self, grace: float = 15.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(grace):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
