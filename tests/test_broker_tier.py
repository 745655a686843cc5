"""The broker tier (docs/scale.md#the-broker-tier): Mosquitto with TCP_NODELAY on one node; beyond
one node a NATS JetStream cluster speaking MQTT, reached through the same bus (`MqttBus`) with no
code of its own. A device on one node orders through a gateway on another; its retained status
and its last will are seen on a third."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.nats import NatsCluster
from device_sdk.bus.url import BrokerUrl
from device_sdk.device.client import DeviceClient
from device_sdk.platform.provisioning.broker_config import BrokerDir, BrokerSettings, render_conf
from device_sdk.platform.provisioning.tls import TlsFiles
from device_sdk.protocol.errors import BusError, RequestTimeout
from device_sdk.protocol.fields import Decision, Outcome
from device_sdk.protocol.messages import DeviceStatus, decode
from device_sdk.protocol.topics import Topics
from simulators.scenario import ShopBackend

needs_nats = pytest.mark.skipif(
    shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists(),
    reason="nats-server is not installed",
)

DEVICE = """\
import asyncio, sys
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
async def main():
    async with DeviceClient(sys.argv[1], "speaker-2", key=SigningKey.generate()):
        print("online", flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def test_the_provisioned_mosquitto_sends_small_messages_at_once(tmp_path: Path) -> None:
    broker = BrokerDir(tmp_path)
    tls = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    conf = render_conf(broker, BrokerSettings(), tls)
    assert "\nset_tcp_nodelay true\n" in conf


async def _status(url: BrokerUrl, device_id: str) -> tuple[DeviceStatus, bool]:
    """The first status of `device_id` that a client subscribing afresh on `url` gets, and whether it came
    retained (a status published while it subscribes comes live)."""
    async with MqttBus(url, f"monitor-{os.getpid()}-{asyncio.get_running_loop().time()}") as bus:
        inbox = await bus.subscribe(Topics().device_status(device_id))
        received = await inbox.get(10.0)
    status = decode(received.payload)
    assert isinstance(status, DeviceStatus)
    return status, received.retain


@needs_nats
async def test_a_device_orders_through_a_gateway_on_another_nats_node_with_retained_status_and_will() -> None:
    async with NatsCluster(3) as cluster:
        gateway_node, device_node, monitor_node = cluster.urls
        async with ShopBackend(gateway_node) as shop:
            assert shop.worker is not None
            assert shop.worker.shared is False  # no $share on NATS: found out, not assumed
            key = await asyncio.to_thread(shop.provision, "speaker-1")
            async with DeviceClient(device_node, "speaker-1", key=key) as device:
                offer = await device.ask("buy a bottle of milk", timeout=30)
                result = await device.answer(offer, Decision.CONFIRM, timeout=30)
                assert result.outcome is Outcome.ORDERED
                merchant = shop.checkout.merchant
                assert merchant is not None
                assert merchant.orders() == [result.order_id]
                assert device.controller_id == shop.gateway.gateway_id  # claimed across the cluster
                status, retained = await _status(monitor_node, "speaker-1")
                assert status.online is True
                assert retained

            # a device that dies without a goodbye: its last will, retained, on the third node
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", DEVICE, device_node.argument(), stdout=subprocess.PIPE
            )
            try:
                assert child.stdout is not None
                assert await child.stdout.readline() == b"online\n"
                status, retained = await _status(monitor_node, "speaker-2")
                assert status.online is True
                assert retained
            finally:
                child.send_signal(signal.SIGKILL)
                await child.communicate()
            for _ in range(50):  # the will lands within a moment; no time is asserted
                if (await _status(monitor_node, "speaker-2"))[0].online is False:
                    break
                await asyncio.sleep(0.2)
            status, retained = await _status(monitor_node, "speaker-2")
            assert status.online is False  # the will...
            assert retained  # ...kept for whoever subscribes later, on any node


def test_a_nats_cluster_has_two_nodes_at_least() -> None:
    with pytest.raises(BusError, match="2 to 5 nodes"):
        NatsCluster(1)


@needs_nats
async def test_a_burst_of_devices_connecting_at_once_to_a_nats_cluster_is_taken() -> None:
    """250 clients at once, each with a device's last will and its two QoS 1 subscriptions: with the
    consumers replicated on disk (NATS's defaults) every one was refused here; with one replica in
    memory none is."""
    topics = Topics()
    async with NatsCluster(3) as cluster:
        buses: list[MqttBus] = []

        async def device(n: int) -> None:
            device_id = f"burst-{n}"
            bus = MqttBus(cluster.urls[n % 3], f"dev-{device_id}", will=(topics.device_status(device_id), b"gone"))
            await bus.connect()
            buses.append(bus)
            await bus.subscribe(topics.device_down(device_id), topics.device_controller(device_id))

        try:
            outcomes = await asyncio.gather(*(device(n) for n in range(250)), return_exceptions=True)
        finally:
            await asyncio.gather(*(bus.close() for bus in buses), return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert refused == []


@needs_nats
async def test_a_client_whose_node_dies_moves_to_another_node_of_its_url_and_hears_again() -> None:
    """A client given every node (`mqtt://n1,n2,n3`, its own first) does not wait for its node to come
    back: it connects to the next at once. JetStream then elects new leaders for the dead node's
    streams, and for some seconds the other nodes refuse subscriptions (SUBACK 0x80): the bus asks
    again until granted; before, such a client stayed connected and deaf."""
    async with NatsCluster(3) as cluster:
        publisher_node, own_node, other_node = cluster.urls
        tier = BrokerUrl.parse(",".join(f"{u.host}:{u.port}" for u in (own_node, other_node, publisher_node)))
        topic = Topics().device_down("speaker-1")
        async with MqttBus(tier, "dev-speaker-1") as bus, MqttBus(publisher_node, "gw-1") as publisher:
            assert bus.node == (own_node.host, own_node.port)
            inbox = await bus.subscribe(topic)
            back = asyncio.Event()

            async def hook() -> None:
                back.set()

            bus.add_connect_hook(hook)
            await cluster.stop_node(1)  # the client's node, killed
            await asyncio.wait_for(back.wait(), 30)
            assert bus.node != (own_node.host, own_node.port)  # on another node of its list
            heard = None
            for attempt in range(60):  # the cluster recovers within a minute here; no time is asserted
                with contextlib.suppress(BusError, RequestTimeout):
                    await publisher.publish(topic, f"hello {attempt}".encode(), timeout=2.0)
                    heard = (await inbox.get(1.0)).payload
                    break
            assert heard is not None and heard.startswith(b"hello")
