"""A private Mosquitto broker on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from .errors import BusError
from .mqtt import BrokerUrl
from .service import Service

CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_queued_messages 100000
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MosquittoServer(Service):
    """Runs `mosquitto` as a child process; `restart()` kills it hard and starts it on the same port."""

    def __init__(self, binary: str | None = None, port: int | None = None) -> None:
        found = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(found).exists():
            raise BusError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = found
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="mosquitto-")
        self._conf = Path(self._dir.name) / "mosquitto.conf"
        self._conf.write_text(CONFIG.format(port=self.port))
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl("127.0.0.1", self.port)

    async def start(self, timeout: float = 5.0) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self.binary, "-c", str(self._conf), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                err = await self._proc.stderr.read() if self._proc.stderr else b""
                raise BusError(f"mosquitto exited: {err.decode(errors='replace').strip()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                return
            except OSError:
                await asyncio.sleep(0.02)
        raise BusError(f"mosquitto did not listen on {self.port} within {timeout} s")

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        self._proc = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        self._dir.cleanup()
