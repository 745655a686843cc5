"""A NATS cluster with JetStream and MQTT on free loopback ports: the broker tier beyond one node.

Each node is a `nats-server` child process with its own client, cluster (route) and MQTT ports
and its own JetStream directory; every node routes to every other. Devices and gateways speak
MQTT 3.1.1 to any node (`urls`): retained messages and last wills are kept in JetStream and seen
on every node. NATS's MQTT has no `$share` subscriptions: an agent worker on it runs alone, or as
NATS queue-group members (docs/scale.md#the-broker-tier).

Each QoS 1 subscription of an MQTT client is a JetStream consumer. Replicated on three nodes and kept
on disk (the defaults), creating them went through the cluster's meta leader and timed out under a
burst of connections here: 578 of 600 clients connecting at 300 a second were refused. Devices and
gateways connect with clean sessions, so their consumers need outlive neither the connection nor the
node: one replica in memory (`consumer_replicas: 1`, `consumer_memory_storage: true`) took 3,000
clients at 500 a second with none refused. Retained messages and wills stay in replicated streams.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from device_sdk.protocol.errors import BusError
from device_sdk.service import Service

from .mosquitto import free_port
from .url import BrokerUrl

NODE = """\
server_name: {name}
listen: 127.0.0.1:{client}
jetstream {{ store_dir: "{store}", max_memory_store: 64MB, max_file_store: 256MB }}
cluster {{ name: {cluster}, listen: 127.0.0.1:{route}, routes: [{routes}] }}
mqtt {{ listen: 127.0.0.1:{mqtt}, consumer_replicas: 1, consumer_memory_storage: true }}
"""


class NatsCluster(Service):
    """`nodes` nats-server processes in one cluster; `start()` returns once every node takes an MQTT
    connection (JetStream has elected its leader). `urls[i]` is node i's MQTT address."""

    def __init__(self, nodes: int = 3, *, binary: str | None = None, cluster: str = "device-sdk") -> None:
        found = binary or shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(found).exists():
            raise BusError("nats-server is not installed (Debian: apt-get install nats-server)")
        if not 2 <= nodes <= 5:
            raise BusError("a NATS cluster here has 2 to 5 nodes")
        self.binary = found
        self._dir = tempfile.TemporaryDirectory(prefix="nats-")
        root = Path(self._dir.name)
        ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        routes = ", ".join(f"nats-route://127.0.0.1:{route}" for _, route, _ in ports)
        self.urls = [BrokerUrl("127.0.0.1", mqtt) for _, _, mqtt in ports]
        self._confs: list[Path] = []
        for n, (client, route, mqtt) in enumerate(ports):
            conf = root / f"node{n}.conf"
            store = root / f"js{n}"
            conf.write_text(NODE.format(name=f"n{n}", client=client, store=store, cluster=cluster, route=route,
                                        routes=routes, mqtt=mqtt))  # fmt: skip
            self._confs.append(conf)
        self._procs: list[asyncio.subprocess.Process | None] = [None] * nodes

    def log(self, node: int) -> str:
        try:
            return (Path(self._dir.name) / f"node{node}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    async def start(self, timeout: float = 30.0) -> None:
        for n in range(len(self._confs)):
            await self.start_node(n)
        deadline = time.monotonic() + timeout
        for n, url in enumerate(self.urls):
            while not await _mqtt_answers(url):
                if time.monotonic() > deadline:
                    raise BusError(f"NATS node {n} took no MQTT connection within {timeout} s: {self.log(n)[-600:]}")
                await asyncio.sleep(0.2)

    async def start_node(self, node: int) -> None:
        log = Path(self._dir.name) / f"node{node}.log"
        with log.open("ab") as out:  # a file, not a pipe nobody reads
            self._procs[node] = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(self._confs[node]), stdout=subprocess.DEVNULL, stderr=out
            )

    async def stop_node(self, node: int) -> None:
        """Kill one node hard (its clients reconnect to another)."""
        proc = self._procs[node]
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        self._procs[node] = None

    async def stop(self) -> None:
        for n in range(len(self._procs)):
            await self.stop_node(n)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await super().__aexit__(exc_type, exc, tb)
        self._dir.cleanup()


async def _mqtt_answers(url: BrokerUrl) -> bool:
    """Does the node answer an MQTT CONNECT with a CONNACK that accepts it?"""
    connect = bytes([0x10, 0x12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 6]) + b"probe1"
    try:
        async with asyncio.timeout(2.0):
            reader, writer = await asyncio.open_connection(url.host, url.port)
            try:
                writer.write(connect)
                await writer.drain()
                connack = await reader.readexactly(4)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    return connack[0] == 0x20 and connack[3] == 0
