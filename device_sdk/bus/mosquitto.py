"""A private Mosquitto broker on a free loopback port, for tests and benchmarks.

By default it is an open broker (anonymous clients, no ACL). With `config` it runs a configuration
of one's own, for example the one `device-sdk provision` writes (users, ACL, TLS listener).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from device_sdk.protocol.errors import BusError, ConfigError
from device_sdk.service import Service

from .url import BrokerUrl

CONFIG = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
max_queued_messages 100000
"""

_LISTENER = re.compile(r"^\s*listener\s+(\d+)", re.MULTILINE)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MosquittoServer(Service):
    """Runs `mosquitto` as a child process; `restart()` kills it hard and starts it on the same ports.

    `config` is a configuration of one's own: a `Path` to a file (used where it is), or the text of
    one (`str`). `start()` waits until every `listener` port in it accepts connections; `port` is
    the listener `url` points at (default: the first), `tls_port` the TLS one, for `tls_url`.
    The broker's log (stderr) goes to `log_file`.
    """

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        *,
        config: str | Path | None = None,
        tls_port: int | None = None,
    ) -> None:
        found = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(found).exists():
            raise BusError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        self.binary = found
        self._dir = tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.log_file = Path(self._dir.name) / "mosquitto.log"
        if config is None:
            self.port = port or free_port()
            self._conf = Path(self._dir.name) / "mosquitto.conf"
            self._conf.write_text(CONFIG.format(port=self.port))
            self._listeners = [self.port]
        else:
            if isinstance(config, Path):
                self._conf = config
                try:
                    text = config.read_text()
                except OSError as exc:
                    raise ConfigError(f"cannot read {config}: {exc.strerror}") from None
            else:
                self._conf = Path(self._dir.name) / "mosquitto.conf"
                self._conf.write_text(config)
                text = config
            self._listeners = [int(p) for p in _LISTENER.findall(text)]
            if not self._listeners:
                raise ConfigError("the mosquitto configuration has no `listener` line")
            self.port = port or self._listeners[0]
        self.tls_port = tls_port
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl("127.0.0.1", self.port)

    @property
    def tls_url(self) -> BrokerUrl:
        """`mqtts://localhost:<tls_port>` (no credentials, no CA: `dataclasses.replace` adds them)."""
        if self.tls_port is None:
            raise ConfigError("this MosquittoServer was given no tls_port")
        return BrokerUrl("localhost", self.tls_port, tls=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def log(self) -> str:
        """What the broker wrote to its log so far."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(self, timeout: float = 5.0) -> None:
        with self.log_file.open("ab") as log:  # a file, not a pipe nobody reads: a full pipe would stall it
            self._proc = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(self._conf), stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + timeout
        waiting = list(self._listeners)
        while time.monotonic() < deadline:
            if self._proc.returncode is not None:
                raise BusError(f"mosquitto exited: {self.log().strip()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", waiting[0])
                writer.close()
                await writer.wait_closed()
                waiting.pop(0)
                if not waiting:
                    return
            except OSError:
                await asyncio.sleep(0.02)
        raise BusError(f"mosquitto did not listen on {waiting[0]} within {timeout} s")

    async def reload(self, timeout: float = 5.0) -> None:
        """SIGHUP: Mosquitto reads its password and ACL files again. Returns once its log says so;
        a connection made after that is checked against the new files."""
        if self._proc is None or self._proc.returncode is not None:
            raise BusError("mosquitto is not running")
        before = self.log().count("Reloading config")
        os.kill(self._proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log().count("Reloading config") <= before:
            if time.monotonic() > deadline:
                raise BusError(f"mosquitto did not reload within {timeout} s")
            await asyncio.sleep(0.01)

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
