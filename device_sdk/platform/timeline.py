"""A tap on the bus that records every protocol message as one readable, timed step."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.subscription import Received
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.readback import format_amount
from device_sdk.protocol.errors import ProtocolError
from device_sdk.protocol.messages import (
    AgentRequest,
    CheckoutProposal,
    ConfirmationRequest,
    ConfirmationResult,
    ControllerClaim,
    DeviceStatus,
    Error,
    GatewayStatus,
    IntentResult,
    OrderResult,
    Transcript,
    Wake,
    WakeResult,
    decode,
)
from device_sdk.protocol.topics import Topics
from device_sdk.terminal import printable


@dataclass(frozen=True)
class Step:
    t_ms: float
    topic: str
    route: str
    type: str
    summary: str

    def line(self) -> str:
        """The step for a terminal: a device's text in it (a topic, what it heard or asks for) is `printable`."""
        return printable(f"{self.t_ms:9.1f} ms  {self.route:<26} {self.type:<21} {self.summary}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "t_ms": round(self.t_ms, 3),
            "topic": self.topic,
            "route": self.route,
            "type": self.type,
            "summary": self.summary,
        }


def describe(message: Any) -> str:
    """One line about a message, for people."""
    if isinstance(message, AgentRequest):
        return repr(message.text)
    if isinstance(message, CheckoutProposal):
        items = ", ".join(f"{line.qty} x {line.sku}" for line in message.lines)
        return f"{message.checkout_id[:11]}: {items}; {format_amount(message.total_minor, message.currency)}"
    if isinstance(message, ConfirmationRequest):
        return f"hash {message.checkout_hash[:12]}, read-back digest {message.display_digest[:12]}"
    if isinstance(message, ConfirmationResult):
        heard = f" (heard {message.heard!r})" if message.heard else ""
        return f"{message.decision} by {message.modality}{heard}"
    if isinstance(message, OrderResult):
        return f"{message.outcome} {message.order_id or ''} {message.reason or ''}".strip()
    if isinstance(message, Error):
        return f"{message.code}: {message.text}"
    if isinstance(message, DeviceStatus | GatewayStatus):
        return "online" if message.online else "offline"
    if isinstance(message, ControllerClaim):
        return f"controlled by {message.controller_id}"
    if isinstance(message, Transcript):
        return f"heard {message.text!r}" + ("" if message.final else " (partial)")
    if isinstance(message, Wake):
        return f"wake word, confidence {message.confidence:.2f}, {message.energy_db:.1f} dBFS"
    if isinstance(message, WakeResult):
        return f"{'granted' if message.granted else 'not chosen'}: {message.winner} opens {message.session_id}"
    if isinstance(message, IntentResult):
        return f"{message.intent_id}: {message.outcome or message.code} {message.order_id or message.deep_link or ''}"
    return ""


class Timeline:
    """Subscribes to everything under the protocol root and keeps (and optionally prints) each step."""

    def __init__(
        self,
        url: BrokerUrl | str,
        *,
        topics: Topics | None = None,
        echo: Callable[[Step], None] | None = None,
        skip: frozenset[str] = frozenset({"ping", "pong", "device.info"}),
    ) -> None:
        self.topics = topics or Topics()
        self.steps: list[Step] = []
        self._url = url
        self._echo = echo
        self._skip = skip
        self._t0 = time.perf_counter()
        self._bus: MqttBus | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._bus = MqttBus(self._url, f"timeline-{id(self):x}")
        await self._bus.connect()
        sub = await self._bus.subscribe(self.topics.everything())
        self._task = asyncio.create_task(self._run(sub))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._bus is not None:
            await self._bus.close()

    async def _run(self, sub: Any) -> None:
        async for received in sub:
            step = self._step(received)
            if step is not None:
                self.steps.append(step)
                if self._echo is not None:
                    self._echo(step)

    def _step(self, received: Received) -> Step | None:
        if received.retain or not received.payload:
            return None  # state from before the tap started
        if received.topic.startswith(f"{self.topics.base}/probe/") or received.topic.endswith(("/audio", "/image")):
            return None  # a broker capability probe, or binary chunks and images (requests name them)
        kind: str
        if received.topic.startswith(f"{self.topics.base}/oem/") and received.topic.endswith("/intent"):
            kind, summary = "oem.intent", f"signed intent, {len(received.payload)} bytes"  # a JWS, not a message
        else:
            try:
                message = decode(received.payload)
                kind, summary = message.type, describe(message)
            except ProtocolError as exc:
                kind, summary = "(refused)", str(exc)
        if kind in self._skip:
            return None
        t_ms = (time.perf_counter() - self._t0) * 1000
        return Step(t_ms, received.topic, self._route(received.topic), kind, summary)

    def _route(self, topic: str) -> str:
        parts = topic.removeprefix(self.topics.base + "/").split("/")
        match parts:
            case ["device", device, "up"]:
                return f"{device} -> gateway"
            case ["device", device, "down"]:
                return f"gateway -> {device}"
            case ["device", device, leaf]:
                return f"{device} {leaf}"
            case ["agent", "request"]:
                return "gateway -> agent"
            case ["agent", "reply", gateway]:
                return f"agent -> {gateway[:12]}"
            case ["gateway", gateway, leaf]:
                return f"{gateway[:12]} {leaf}"
            case ["oem", oem, phone, "intent"]:
                return f"{oem[:12]} -> {phone[:12]}"
            case ["oem", oem, phone, "reply"]:
                return f"{phone[:12]} -> {oem[:12]}"
        return topic
