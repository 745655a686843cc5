"""An asyncio MQTT connection on paho-mqtt that stays up: reconnect with backoff, resubscribe, hooks.

paho drives the socket from the event loop (no network thread); only the blocking TCP connect
runs in an executor. Subscriptions are bounded async iterators; QoS 1 publishes wait for PUBACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from device_sdk.protocol.errors import BusError, DeviceSdkError, ErrorCode, RequestTimeout
from device_sdk.service import Service

from .subscription import Received, Subscription
from .url import BrokerUrl

log = logging.getLogger(__name__)

ConnectHook = Callable[[], Awaitable[None]]


class _Denied(BusError):
    """A SUBACK that refused the filters at `indices`."""

    code = ErrorCode.NOT_AUTHORIZED

    def __init__(self, indices: list[int]) -> None:
        super().__init__("the broker refused a subscription")
        self.indices = indices


class MqttBus(Service):
    """One MQTT client connection, kept up until the context exits.

    Use as `async with MqttBus(url, client_id) as bus:`. If the broker goes away the bus
    reconnects with exponential backoff and jitter, resubscribes every live subscription,
    then runs the connect hooks (for example to republish a retained status). A URL that lists
    several nodes of a broker tier (`mqtt://node1,node2,node3`) moves to the next node when one
    does not answer, at once, and backs off only after every node has failed a round.
    """

    def __init__(
        self,
        url: BrokerUrl | str,
        client_id: str,
        *,
        will: tuple[str, bytes] | None = None,
        keepalive: int = 10,
        backoff: tuple[float, float] = (0.05, 5.0),
        connect_timeout: float = 10.0,
        tls_ca: str | None = None,
    ) -> None:
        self.url = url if isinstance(url, BrokerUrl) else BrokerUrl.parse(url)
        self.client_id = client_id
        self.reconnects = 0
        self._node = 0
        """The index in `url.nodes` of the node connected to, or tried next."""
        self._keepalive = keepalive
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._subs: list[Subscription] = []
        self._hooks: list[ConnectHook] = []
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._resubscribing: dict[int, tuple[list[tuple[str, int]], float]] = {}
        """The filters asked again after a reconnect, by mid, and how long to wait if refused."""
        self._connected = asyncio.Event()
        self._connack: asyncio.Future[None] | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._gone: asyncio.Future[None] | None = None
        self._last_error: str | None = None
        self._connecting = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=paho.MQTTv311
        )
        client.max_inflight_messages_set(200)
        client.max_queued_messages_set(10_000)
        if self.url.username is not None:
            client.username_pw_set(self.url.username, self.url.password)
        if self.url.tls:
            client.tls_set(ca_certs=tls_ca or self.url.ca, cert_reqs=ssl.CERT_REQUIRED)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        self._client = client

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.connect()

    async def stop(self) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self) -> None:
        """Connect, retrying with backoff for up to `connect_timeout` seconds.

        A refusal that no retry can change ends it at once: bad credentials or not authorised
        (`BusError` with code `not_authorized`), or a TLS certificate that does not verify.
        """
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._connect_with_backoff(final=True)
        except BusError:
            await self.close()
            raise
        except TimeoutError:
            await self.close()  # a connect still under way must not come alive later
            why = f" (last error: {self._last_error})" if self._last_error else ""
            raise BusError(
                f"cannot reach the MQTT broker at {self.url} within {self._connect_timeout} s{why}"
            ) from None
        self._spawn(self._misc_loop())

    async def close(self) -> None:
        """Unsubscribe, disconnect cleanly (no last will) and end every subscription.

        The UNSUBSCRIBE is acknowledged before the DISCONNECT goes: amqtt 0.12 leaks the server-side
        connection of a client that disconnects with subscriptions (or an unacknowledged unsubscribe).
        """
        if self._closing:
            return
        filters = sorted({f for sub in self._subs for f in sub.filters})
        if filters and self._connected.is_set():
            result, mid = self._client.unsubscribe(filters)
            if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                with contextlib.suppress(DeviceSdkError):
                    await self._wait_ack(mid, 1.0, f"unsubscribing from {len(filters)} filters")
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._connected.is_set():
            self._connected.clear()
            self._gone = self._loop.create_future()
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._gone
        with contextlib.suppress(Exception):
            sock = self._client.socket()
            if sock is not None and sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                self._loop.remove_writer(sock.fileno())
                sock.close()
        for sub in self._subs:
            sub._end()
        self._subs.clear()
        for fut in self._acks.values():
            if not fut.done():
                fut.set_exception(BusError("connection closed"))

    def drop(self) -> None:
        """End the connection at once without a DISCONNECT, as a crash or a lost link would: the broker
        publishes the last will, and the bus reconnects as after any loss (a conformance run's `drop`)."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket) and self._connected.is_set():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def add_connect_hook(self, hook: ConnectHook) -> None:
        """Run `hook` after every reconnect (not the first connect)."""
        self._hooks.append(hook)

    async def wait_connected(self, timeout: float | None) -> None:
        if self._connected.is_set():
            return
        if self._closing:
            raise BusError("the bus is closed")
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise BusError(f"not connected to {self.url} (waited {timeout} s)", ErrorCode.NOT_CONNECTED) from None

    # publish / subscribe -----------------------------------------------------------------

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float | None = 10.0
    ) -> None:
        """Publish; at QoS 1 return once the broker acknowledged it (PUBACK)."""
        await self.wait_connected(timeout)
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BusError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            return
        await self._wait_ack(info.mid, timeout, f"a publish to {topic}")

    async def _wait_ack(self, mid: int, timeout: float | None, what: str) -> None:
        # No await between the paho call and this line, so the ack cannot have arrived yet.
        fut = self._loop.create_future()
        self._acks[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise RequestTimeout(f"the broker did not acknowledge {what} within {timeout} s") from None
        finally:
            self._acks.pop(mid, None)

    async def subscribe(self, *filters: str, qos: int = 1, maxsize: int = 10_000) -> Subscription:
        """Start receiving, as one ordered stream, messages that match any of `filters`.

        A filter may be a shared subscription, `$share/<group>/<filter>`. A filter the broker
        refuses (SUBACK 0x80) raises `BusError` with code `not_authorized`, and none of the filters
        stays subscribed. (Mosquitto's ACL file grants every subscription and filters each message.)
        """
        sub = Subscription(self, filters, qos, maxsize)
        self._subs.append(sub)
        if self._connected.is_set():
            result, mid = self._client.subscribe([(f, qos) for f in filters])
            if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise BusError(f"subscribe to {filters} failed: {paho.error_string(result)}")
            try:
                await self._wait_ack(mid, 10.0, f"a subscription to {filters}")
            except _Denied as exc:
                await sub.close()
                denied = ", ".join(filters[i] for i in exc.indices if i < len(filters))
                who = self.url.username or "an anonymous client"
                raise BusError(f"{who} may not subscribe to {denied}", ErrorCode.NOT_AUTHORIZED) from None
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            still = {f for s in self._subs for f in s.filters}
            gone = [f for f in sub.filters if f not in still]
            if self._connected.is_set() and gone:
                result, mid = self._client.unsubscribe(gone)
                if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                    with contextlib.suppress(RequestTimeout):
                        await self._wait_ack(mid, 5.0, f"unsubscribing from {gone}")

    # connection management ---------------------------------------------------------------

    async def _connect_with_backoff(self, *, final: bool = False) -> None:
        """Connect until connected. While this runs, a dropped attempt is retried here, not by a second loop.

        With `final`, a refusal no retry can change raises `BusError`; otherwise (reconnecting) it is
        retried too: the broker's password file may be on its way back.
        """
        delay = self._backoff[0]
        self._connecting = True
        start = self._node
        try:
            while not self._closing:
                if await self._attempt(final):
                    return
                self._node = (self._node + 1) % len(self.url.nodes)
                if self._node == start:  # every node failed this round: back off before the next
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, self._backoff[1])
        finally:
            self._connecting = False
        raise BusError("the bus is closed")

    async def _attempt(self, final: bool = False) -> bool:
        self._connack = self._loop.create_future()
        try:
            await self._loop.run_in_executor(None, self._blocking_connect)
            async with asyncio.timeout(max(self._keepalive, 5)):
                await self._connack
            return self._connected.is_set()  # not if it dropped again right after CONNACK
        except ssl.SSLCertVerificationError as exc:
            self._last_error = f"TLS: the broker's certificate does not verify: {exc.verify_message}"
            if final:
                raise BusError(f"{self.url}: {self._last_error}") from None
        except BusError as exc:
            if final and exc.code is ErrorCode.NOT_AUTHORIZED:
                raise
            if exc.code is ErrorCode.NOT_AUTHORIZED and self._last_error != str(exc):  # once, not every retry
                log.warning("%s: %s; retrying", self.client_id, exc.text)
            self._last_error = str(exc)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._last_error = str(exc) or type(exc).__name__
        log.debug("connect to %s:%d failed: %s", *self.node, self._last_error)
        return False

    @property
    def node(self) -> tuple[str, int]:
        """The (host, port) of the broker node connected to, or tried next."""
        return self.url.nodes[self._node]

    def _blocking_connect(self) -> None:
        host, port = self.node
        self._client.connect(host, port, keepalive=self._keepalive)

    def _ask_again(self, items: list[tuple[str, int]], wait: float) -> None:
        """Subscribe to `items` once more (after a reconnect); a refusal is asked again after `wait`."""
        result, mid = self._client.subscribe(items)
        if result == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._resubscribing[mid] = (items, wait)

    async def _subscribe_later(self, items: list[tuple[str, int]], wait: float) -> None:
        """Ask again for filters the broker refused after a reconnect: a NATS node answers 0x80 while
        its JetStream elects leaders after a node died, and the client stayed connected but deaf.
        Each refusal doubles the wait, up to the reconnect backoff's longest; a filter unsubscribed meanwhile is
        not asked."""
        await asyncio.sleep(wait)
        live = {f for sub in self._subs for f in sub.filters}
        items = [(f, qos) for f, qos in items if f in live]
        if items and self._connected.is_set():  # if not, the next connect asks for every filter
            self._ask_again(items, min(wait * 2, self._backoff[1]))

    async def _reconnect(self) -> None:
        await self._connect_with_backoff()
        self.reconnects += 1
        log.info("%s reconnected to %s:%d (%d)", self.client_id, *self.node, self.reconnects)
        self._spawn(self._run_hooks())  # apart, so a drop during a hook starts a new reconnect

    async def _run_hooks(self) -> None:
        for hook in list(self._hooks):
            try:
                await hook()
            except Exception as exc:
                log.warning("%s: connect hook %s failed: %s", self.client_id, getattr(hook, "__name__", hook), exc)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._client.socket() is not None:
                self._client.loop_misc()

    # paho callbacks (all on the event loop thread, except socket open from the executor) --

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if self._closing:  # a connect that finished after close(): leave at once
            client.disconnect()
            return
        if rc.is_failure:
            if self._connack and not self._connack.done():
                # MQTT 3.1.1 CONNACK 4 and 5, as paho names them
                refused = rc.getName() in ("Bad user name or password", "Not authorized")
                who = f"user {self.url.username!r}" if self.url.username is not None else "an anonymous client"
                self._connack.set_exception(
                    BusError(f"broker {self.url} refused {who}: {rc}", ErrorCode.NOT_AUTHORIZED)
                    if refused
                    else BusError(f"broker {self.url} refused the connection: {rc}")
                )
            return
        filters = {f: sub.qos for sub in self._subs for f in sub.filters}
        if filters:
            self._ask_again(list(filters.items()), 0.5)
        self._connected.set()
        if self._connack and not self._connack.done():
            self._connack.set_result(None)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._connected.clear()
        self._resubscribing.clear()  # a reconnect asks for every filter again
        if self._closing:
            if self._gone is not None and not self._gone.done():
                self._gone.set_result(None)
            return
        log.info("%s lost the broker at %s: %s", self.client_id, self.url, rc)
        if self._connack and not self._connack.done():
            self._connack.set_exception(BusError(f"disconnected while connecting: {rc}"))
        if not self._connecting and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = self._spawn(self._reconnect())

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        received = Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain))
        for sub in self._subs:
            if sub.matches(received.topic):
                sub._put(received)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _rc: ReasonCode, _p: Any) -> None:
        self._ack(mid)

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
        denied = [i for i, code in enumerate(codes) if code.is_failure]
        asked = self._resubscribing.pop(mid, None)
        if asked is not None and denied:
            items, wait = asked
            refused = [items[i] for i in denied if i < len(items)]
            log.warning("%s: the broker refused %s after a reconnect; asking again in %.1f s",
                        self.client_id, [f for f, _ in refused], wait)  # fmt: skip
            self._spawn(self._subscribe_later(refused, wait))
        fut = self._acks.get(mid)
        if denied and fut is not None and not fut.done():
            fut.set_exception(_Denied(denied))
        self._ack(mid)

    def _on_unsubscribe(self, _c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self._ack(mid)

    def _ack(self, mid: int) -> None:
        fut = self._acks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_socket_open(self, client: paho.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):  # small packets must not wait for Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def readable() -> None:
            try:
                client.loop_read()
            except Exception as exc:  # a broken socket: paho reports the disconnect itself
                log.debug("read failed: %s", exc)

        self._call(self._loop.add_reader, sock.fileno(), readable)

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        fileno = sock.fileno()  # -1 once closed
        if fileno >= 0:
            self._call(self._loop.remove_reader, fileno)
            self._call(self._loop.remove_writer, fileno)

    def _on_register_write(self, client: paho.Client, _u: Any, sock: Any) -> None:
        def writable() -> None:
            try:
                client.loop_write()
            except Exception as exc:
                log.debug("write failed: %s", exc)

        self._call(self._loop.add_writer, sock.fileno(), writable)

    def _on_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        if sock.fileno() >= 0:
            self._call(self._loop.remove_writer, sock.fileno())

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn` now on the loop thread, or schedule it there from the connect thread."""
        if self._loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)
