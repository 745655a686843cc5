"""The maker console: a read-only local web page that watches the bus (`device-sdk console`).

It shows the devices on the bus and their status (their retained `device.status` and `device.info`),
a live timeline of each session (every protocol message, as `demo` prints it), the spoken read-back
and, for glasses, the lens card as rendered, and each session's audit trail with the log's
verification. Served by aiohttp on loopback only; the page gets events by server-sent events
(`/events`: the history first, then live) and the trail from `/audit/<session>`. It has no route that
writes and the page no control: it never confirms anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.lens import LensCard
from device_sdk.platform.checkout.audit import trail, verify_log
from device_sdk.platform.timeline import describe
from device_sdk.protocol.errors import ConfigError, DeviceSdkError, ProtocolError
from device_sdk.protocol.fields import DeviceKind
from device_sdk.protocol.messages import ConfirmationRequest, DeviceInfo, DeviceStatus, decode
from device_sdk.protocol.topics import Topics

from .console_page import PAGE

HISTORY = 2000
"""Events kept for a page that opens late (the oldest go first)."""


class Console:
    """The bus tap and the web server. Use as `async with Console(url, audit=path) as console:`; the page
    is at `console.url`."""

    def __init__(
        self,
        broker: BrokerUrl,
        *,
        audit: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        topics: Topics | None = None,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(f"the console listens on loopback only, not {host}")
        self.broker, self.audit, self.topics = broker, Path(audit) if audit else None, topics or Topics()
        self.host, self.port = host, port
        self.devices: dict[str, dict[str, Any]] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.cards: dict[str, bytes] = {}
        self._listeners: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._t0 = time.time()
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def __aenter__(self) -> Console:
        try:
            bus = await self._stack.enter_async_context(MqttBus(self.broker, f"console-{id(self):x}"))
            subscription = await bus.subscribe(*watched(self.topics))
            task = asyncio.create_task(self._watch(subscription))
            self._stack.push_async_callback(_cancel, task)
            app = web.Application()
            app.add_routes([
                web.get("/", self._page), web.get("/events", self._events),
                web.get("/audit/{session}", self._trail), web.get("/card/{checkout}.png", self._card),
            ])  # fmt: skip
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            self._stack.push_async_callback(runner.cleanup)
            self._stack.callback(self._hang_up)  # first: the event streams end, then the server stops
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self.port = runner.addresses[0][1]
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # the bus ---------------------------------------------------------------------------------

    async def _watch(self, subscription: Any) -> None:
        async for received in subscription:
            topic, payload = received.topic, received.payload
            if not payload:
                continue
            try:
                message = decode(payload)
            except ProtocolError:
                continue  # the timeline of `demo` shows refusals; the console shows what the devices did
            if isinstance(message, DeviceStatus | DeviceInfo):
                self._device(message)
            if received.retain:
                continue
            event = {
                "t": round(time.time() - self._t0, 3),
                "route": topic.removeprefix(self.topics.base + "/"),
                "type": message.type,
                "session": getattr(message, "session_id", None),
                "summary": describe(message),
            }
            if isinstance(message, ConfirmationRequest):
                event["readback"] = message.readback
                device = self.devices.get(message.proposal.device_id, {})
                if device.get("kind") == DeviceKind.GLASSES.value:
                    card = LensCard.for_proposal(message.proposal)
                    self.cards[message.checkout_id] = await asyncio.to_thread(card.png)
                    event["card"] = f"/card/{message.checkout_id}.png"
            if message.type == "order.result":
                event["order_id"] = getattr(message, "order_id", None)
            self._publish(event)

    def _device(self, message: DeviceStatus | DeviceInfo) -> None:
        entry = self.devices.setdefault(message.device_id, {"device_id": message.device_id})
        if isinstance(message, DeviceStatus):
            entry["online"] = message.online
        else:
            entry.update(kind=message.kind.value, room=message.room, locale=message.locale or "en-US")
        self._publish({"type": "device", "device": dict(entry)}, keep=False)

    def _publish(self, event: dict[str, Any], *, keep: bool = True) -> None:
        if keep:
            self.events.append(event)
        for queue in self._listeners:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    def _hang_up(self) -> None:
        """End every open event stream (a page keeps its stream open until it closes)."""
        for queue in self._listeners:
            while True:
                try:
                    queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    queue.get_nowait()

    # the web ---------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=HISTORY)
        self._listeners.add(queue)
        try:
            history = [{"type": "device", "device": dict(d)} for d in self.devices.values()] + list(self.events)
            for event in history:
                await response.write(_sse(event))
            while (event := await queue.get()) is not None:
                await response.write(_sse(event))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._listeners.discard(queue)
        return response

    async def _trail(self, request: web.Request) -> web.Response:
        session = request.match_info["session"]
        if self.audit is None:
            return web.json_response({"verified": None, "problem": "no audit log given (--audit)", "records": []})
        try:
            report = await asyncio.to_thread(verify_log, self.audit)
            records = await asyncio.to_thread(trail, self.audit, session)
        except DeviceSdkError as exc:
            return web.json_response({"verified": False, "problem": exc.text, "records": []})
        return web.json_response({"verified": report.ok, "problem": report.problem, "records": records})

    async def _card(self, request: web.Request) -> web.Response:
        png = self.cards.get(request.match_info["checkout"])
        if png is None:
            raise web.HTTPNotFound()
        return web.Response(body=png, content_type="image/png")


def watched(topics: Topics) -> list[str]:
    """What the console reads: what the monitor role may (docs/security.md), never the step-up PINs,
    the audio, the images or the OEM intents."""
    devices = [topics.all_devices(leaf) for leaf in ("status", "info", "controller", "up", "down")]
    return [*devices, topics.all_gateways_status(), f"{topics.base}/agent/#", f"{topics.base}/oem/+/+/reply",
            topics.errors()]  # fmt: skip


def _sse(event: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def run_console(broker: BrokerUrl, *, audit: str | Path | None, host: str, port: int) -> int:
    """`device-sdk console`: serve until Ctrl-C."""
    async with Console(broker, audit=audit, host=host, port=port) as console:
        print(f"console: {console.url} (watching {broker}; read-only; Ctrl-C stops)", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    return 0
