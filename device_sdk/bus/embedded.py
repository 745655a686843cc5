"""The embedded broker: amqtt in this process on a free loopback port, so the main job needs no server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from amqtt.broker import Broker

from device_sdk.protocol.errors import BusError
from device_sdk.service import Service

from .url import BrokerUrl

# amqtt logs every connection and packet at INFO; the SDK's own logs are enough.
for _name in ("amqtt", "transitions"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class _Subscriptions(dict[str, list[Any]]):
    """amqtt 0.12's subscription table, walked over a snapshot.

    amqtt walks the table across awaits (the retained replay when a client connects, the routing of
    each message); a client subscribing meanwhile raised "dictionary changed size during iteration",
    which killed the connecting client's session before it acknowledged anything (0.12.1 is the
    newest release). Iterating a copy keeps each walk to the table as it was when it began.
    """

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> list[tuple[str, list[Any]]]:  # type: ignore[override]
        return list(super().items())


class EmbeddedBroker(Service):
    """An in-process MQTT 3.1.1 broker (amqtt) with anonymous access on 127.0.0.1.

    amqtt keeps retained messages and fires last wills, but does not implement shared
    subscriptions (`$share/...`); agent workers detect that and fall back to one worker.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._broker: Broker | None = None

    @property
    def url(self) -> BrokerUrl:
        if self._broker is None:
            raise BusError("the embedded broker is not running")
        return BrokerUrl(self._host, self._port)

    async def start(self) -> None:
        config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self._host}:{self._port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        broker = Broker(config)
        broker._subscriptions = _Subscriptions()  # see _Subscriptions: amqtt walks it across awaits
        try:
            await broker.start()
        except Exception as exc:
            raise BusError(f"the embedded broker could not start on {self._host}:{self._port}: {exc}") from None
        server = broker._servers["default"].instance  # amqtt exposes no public accessor for the bound port
        self._port = server.sockets[0].getsockname()[1]
        self._broker = broker

    async def stop(self) -> None:
        """Stop the broker; clients see their connection drop. The port is kept for a restart."""
        if self._broker is not None:
            broker, self._broker = self._broker, None
            # amqtt 0.12 drops its sessions before it closes its listeners, so a client that
            # reconnects quickly lands on a broker that no longer routes: stop accepting first.
            for server in broker._servers.values():
                if server.instance is not None:
                    server.instance.close()
            await broker.shutdown()
