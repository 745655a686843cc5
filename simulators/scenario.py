"""The end-to-end demo: a broker, the reference agent, the checkout stand-in on the consent verifier,
a gateway and a simulated speaker with its own signing key, all in one process, talking only over MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
from device_sdk.media.images import ImageStore
from device_sdk.platform.agent import AgentCore, AgentWorker
from device_sdk.platform.checkout.audit import AuditLog
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.outcomes import Verification
from device_sdk.platform.checkout.policy import PolicyBook
from device_sdk.platform.checkout.profiles import DeviceProfile
from device_sdk.platform.checkout.store_url import StoreUrl, parse_store
from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.platform.gateway.admission import Capacity
from device_sdk.platform.gateway.gateway import Gateway
from device_sdk.platform.gateway.limits import Limits
from device_sdk.platform.timeline import Step, Timeline
from device_sdk.platform.ucp.backend import UcpCheckout
from device_sdk.protocol.errors import OUTCOME_OF
from device_sdk.protocol.fields import DeviceKind, Outcome
from device_sdk.protocol.topics import Topics
from device_sdk.voice.engines import Hearing, hearing_named

from .agent_core import CatalogAgent
from .catalog import demo_catalog
from .checkout import CheckoutStandIn
from .command_parser import CommandParser
from .speaker import SimulatedSpeaker, SpeakerRun

DEFAULT_SAY = "buy two packs of AA batteries and a bottle of milk"
DEFAULT_REPLY = "confirm"
DEFAULTS = {"en-US": (DEFAULT_SAY, DEFAULT_REPLY), "zh-CN": ("帮我买两包五号电池和一瓶牛奶", "确认")}
"""What the demo's user says and answers, per locale."""
DEMO_PARTNER = ("demo-partner", "demo-speaker")
"""The hardware partner and device model the demo's speaker is provisioned as: its orders are theirs."""
log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    broker: str
    run: SpeakerRun
    steps: list[Step] = field(default_factory=list)
    orders_placed: int = 0
    audit: str | None = None
    verification: Verification | None = None

    @property
    def outcome(self) -> Outcome:
        if self.run.result is not None:
            return self.run.result.outcome
        if self.run.error is not None and self.run.error.code in OUTCOME_OF:
            return Outcome(OUTCOME_OF[self.run.error.code])
        return Outcome.NOT_CONFIRMED

    @property
    def ordered(self) -> bool:
        return self.outcome is Outcome.ORDERED and self.orders_placed == 1

    def as_dict(self) -> dict[str, Any]:
        run, result = self.run, self.run.result
        offer = run.offer.request if run.offer else None
        return {
            "broker": self.broker,
            "say": run.said,
            "heard_command": run.heard_command,
            "proposal": offer.proposal.model_dump(mode="json") if offer else None,
            "checkout_hash": offer.checkout_hash if offer else None,
            "readback": offer.readback if offer else None,
            "display_digest": offer.display_digest if offer else None,
            "heard": run.heard,
            "decision": run.decision,
            "outcome": self.outcome.value,
            "order": (
                {"order_id": result.order_id, "total_minor": result.total_minor, "currency": result.currency}
                if result is not None and result.order_id
                else None
            ),
            "reason": result.reason if result else None,
            "error": {"code": run.error.code.value, "text": run.error.text} if run.error else None,
            "mandate": {"id": run.mandate_id, "token": run.mandate} if run.mandate else None,
            "verification": self.verification.as_dict() if self.verification else _refusal(result, run.error),
            "audit": self.audit,
            "timeline": [step.as_dict() for step in self.steps],
        }


def _refusal(result: Any, error: Any) -> dict[str, Any] | None:
    """The verifier's refusal: at completion (in the order result) or when the checkout opened."""
    if error is not None and error.code in OUTCOME_OF:
        return {"accepted": False, "code": error.code.value, "reason": error.text}
    if result is None or result.outcome is Outcome.ORDERED or not result.reason:
        return None
    code, _, text = result.reason.partition(": ")
    return {"accepted": False, "code": code, "reason": text}


class ShopBackend:
    """Everything behind the devices: the reference agent on its own connection, the checkout
    stand-in on a consent verifier, and a gateway. Use as `async with ShopBackend(url) as backend:`.

    `database` is the SQLite file of the audit log and the verifier's store (default: a temporary
    one), or a PostgreSQL URL (`store_url`); devices must be enrolled (`provision` or `enroll`) before their
    confirmations can order.
    """

    def __init__(
        self,
        url: BrokerUrl,
        *,
        topics: Topics | None = None,
        shared: bool | None = None,
        gateway_id: str | None = None,
        confirm_timeout: float = 120.0,
        agent_timeout: float = 15.0,
        make_checkout: Callable[[ConsentVerifier], CheckoutStandIn | UcpCheckout] | None = None,
        agent: AgentCore | None = None,
        database: str | Path | StoreUrl | None = None,
        policy: PolicyBook | None = None,
        agent_url: BrokerUrl | None = None,
        limits: Limits | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self.url = url
        self.agent_url = agent_url or url
        """Where the agent worker connects: on a secured broker, with the agent role's credentials."""
        self.topics = topics or Topics()
        self.catalog = demo_catalog()
        self.images = ImageStore()
        self.agent = agent or CatalogAgent(self.catalog, images=self.images)
        self._gateway_args: dict[str, Any] = {
            "topics": self.topics,
            "gateway_id": gateway_id,
            "confirm_timeout": confirm_timeout,
            "agent_timeout": agent_timeout,
            "limits": limits,
            "capacity": capacity,
        }
        self._make_checkout: Callable[[ConsentVerifier], CheckoutStandIn | UcpCheckout] = make_checkout or (
            lambda verifier: CheckoutStandIn(verifier, self.catalog)
        )
        self._database = parse_store(database) if database is not None else None
        placements = {placement.sku: placement.by for placement in self.catalog.placements}  # paid for
        self._policy = policy if policy is not None else PolicyBook({"placements": placements})
        self._shared = shared
        self._stack = contextlib.AsyncExitStack()
        self.worker: AgentWorker | None = None

    async def __aenter__(self) -> ShopBackend:
        stack = await self._stack.__aenter__()
        try:
            path: StoreUrl | Path | None = self._database
            if path is None:
                path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="device-sdk-"))) / "shop.db"
            self.db = await stack.enter_async_context(Database(path))
            self.audit = await asyncio.to_thread(AuditLog.open, self.db)
            self.verifier = await asyncio.to_thread(
                ConsentVerifier, self.db, self.audit, audience="shop-checkout:demo", policy=self._policy
            )
            self.checkout = self._make_checkout(self.verifier)
            self.gateway = Gateway(self.url, self.checkout, audit=self.audit, **self._gateway_args)
            agent_bus = await stack.enter_async_context(MqttBus(self.agent_url, f"agent-{self.gateway.gateway_id}"))
            self.worker = AgentWorker(
                agent_bus, self.agent, topics=self.topics, shared=self._shared, images=self.images
            )
            await stack.enter_async_context(self.worker)
            await stack.enter_async_context(self.gateway)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def enroll(
        self, device_id: str, key: SigningKey, kind: DeviceKind = DeviceKind.SPEAKER, *, pin: str | None = None
    ) -> str:
        """Trust `key` for `device_id` from now on (rotating out any earlier key), as a device of
        `kind` with that kind's capabilities and, with `pin`, its user's step-up PIN; returns its kid."""
        kid = self.verifier.registry.rotate(device_id, key.public)
        self.verifier.registry.describe(device_id, DeviceProfile.of(kind))
        if pin is not None:
            self.verifier.step_up.set_pin(device_id, pin)
        return kid

    def provision(self, device_id: str, kind: DeviceKind = DeviceKind.SPEAKER, *, pin: str | None = None) -> SigningKey:
        """A new signing key for a simulated device of `kind`, enrolled with the verifier."""
        key = SigningKey.generate()
        self.enroll(device_id, key, kind, pin=pin)
        return key


async def broker_or_embedded(
    stack: contextlib.AsyncExitStack, broker: BrokerUrl | str | None
) -> tuple[BrokerUrl, bool | None]:
    """The broker at `broker`, or with None an embedded one in this process, entered on `stack`; and
    whether it has shared subscriptions (False for the embedded one, None: ask the broker)."""
    if broker is None:
        return (await stack.enter_async_context(EmbeddedBroker())).url, False
    return BrokerUrl.parse(broker) if isinstance(broker, str) else broker, None


async def run_demo(
    say: str = DEFAULT_SAY,
    replies: Sequence[str] = (DEFAULT_REPLY,),
    *,
    broker: BrokerUrl | str | None = None,
    device_id: str = "speaker-1",
    topics: Topics | None = None,
    on_step: Callable[[Step], None] | None = None,
    present: Callable[[str], None] | None = None,
    timeout: float = 30.0,
    audit: str | Path | None = None,
    policy: PolicyBook | None = None,
    voice: bool = False,
    hearing: Hearing | None = None,
    locale: str = "en-US",
    pin: str | None = None,
    make_checkout: Callable[[ConsentVerifier], CheckoutStandIn | UcpCheckout] | None = None,
) -> DemoResult:
    """Run one spoken request to its outcome; with no broker URL, on an embedded broker; with no
    audit path, the audit log and the verifier's store live in a temporary file.

    With `voice` the request and the replies are synthesised with espeak-ng and heard through
    the speaker's voice pipeline (`hearing`, default the hybrid: pocketsphinx, with Whisper as the
    second opinion on replies); without it they are typed. With `pin` the speaker is provisioned with
    that step-up PIN, and its user says it when an order is over the voice cap."""
    topics = topics or Topics()
    async with contextlib.AsyncExitStack() as stack:
        url, shared = await broker_or_embedded(stack, broker)
        timeline = await stack.enter_async_context(Timeline(url, topics=topics, echo=on_step))
        backend = await stack.enter_async_context(
            ShopBackend(url, topics=topics, shared=shared, database=audit, policy=policy, make_checkout=make_checkout)
        )
        key = await asyncio.to_thread(backend.provision, device_id, pin=pin)
        await asyncio.to_thread(backend.verifier.registry.attribute, device_id, *DEMO_PARTNER)
        device = await stack.enter_async_context(DeviceClient(url, device_id, topics=topics, key=key, locale=locale))
        speaker = SimulatedSpeaker(device, present, pin=pin)
        if voice:
            heard = hearing if hearing is not None else await asyncio.to_thread(hearing_named)
            vocabulary = CommandParser(backend.catalog).vocabulary()
            run = await speaker.run_voice(
                say,
                replies,
                hearing=heard,
                vocabulary=vocabulary,
                timeout=timeout,
            )
        else:
            run = await speaker.run(say, replies, timeout=timeout)
        await timeline_settle(timeline)
        return DemoResult(
            str(url),
            run,
            list(timeline.steps),
            backend.checkout.placed,
            str(audit) if audit is not None else None,
            backend.verifier.last,
        )


async def timeline_settle(timeline: Timeline, quiet: float = 0.05, limit: float = 1.0) -> None:
    """Wait until no new step arrived for `quiet` seconds (the tap lags the device a little)."""
    waited, seen = 0.0, -1
    while waited < limit and seen != len(timeline.steps):
        seen = len(timeline.steps)
        await asyncio.sleep(quiet)
        waited += quiet
