"""The gateway: serves devices on the bus, asks the agent core, and gates every checkout on the
device's own confirmation of exactly the proposal it presented.

One gateway controls a device at a time (a retained claim on the device's controller topic).
Each session's messages are handled one after another; different sessions run concurrently.
The claims (`claims.py`), the audio streams (`audio_intake.py`) and the way from an agent request
to an order result (`flow.py`) are parts the gateway composes; it routes, refuses and arbitrates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.subscription import Received, Subscription
from device_sdk.bus.url import BrokerUrl
from device_sdk.media.audio import AudioStream
from device_sdk.platform.agent import RemoteAgent
from device_sdk.platform.checkout.audit import AuditLog
from device_sdk.platform.checkout.backend import CheckoutBackend
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode, ProtocolError, SessionError
from device_sdk.protocol.fields import WireMessage, new_id, now
from device_sdk.protocol.messages import (
    AgentRequest,
    AudioStart,
    AudioStop,
    ConfirmationResult,
    DeviceInfo,
    Error,
    GatewayStatus,
    HandOver,
    OrderStatus,
    Ping,
    Pong,
    Transcript,
    Wake,
    decode,
)
from device_sdk.protocol.step_up import StepUp
from device_sdk.protocol.topics import Topics, check_id
from device_sdk.service import Service

from .admission import Admission, Capacity
from .arbitration import DEFAULT_WINDOW, Arbiter, Contender, Round
from .audio_intake import AudioIntake
from .claims import ClaimBook, decode_as
from .flow import SessionFlow, SessionKey
from .limits import DeviceLimiter, Limits
from .quota import OPEN, CheckoutQuota
from .recovery import Recovery
from .session import Session
from .step_up import StepUpDesk

log = logging.getLogger(__name__)


class Gateway(Service):
    """Routes device sessions to the agent core and through the confirmation gate to the checkout."""

    def __init__(
        self,
        url: BrokerUrl | str,
        checkout: CheckoutBackend,
        *,
        gateway_id: str | None = None,
        topics: Topics | None = None,
        agent_timeout: float = 15.0,
        confirm_timeout: float = 120.0,
        keep_ended: float = 60.0,
        offline_grace: float = 15.0,
        claim_settle: float = 0.1,
        checkout_timeout: float = 10.0,
        audit: AuditLog | None = None,
        wake_window: float = DEFAULT_WINDOW,
        limits: Limits | None = None,
        capacity: Capacity | None = None,
    ) -> None:
        self.url = url
        self.checkout = checkout
        self.audit = audit
        self.gateway_id = check_id(gateway_id or new_id("gw")[:19], "gateway id")
        self.topics = topics or Topics()
        self.agent_timeout = agent_timeout
        self.confirm_timeout = confirm_timeout
        self.keep_ended = keep_ended
        self.offline_grace = offline_grace
        self.claim_settle = claim_settle
        self.checkout_timeout = checkout_timeout
        self.arbiter = Arbiter(wake_window)
        self._not_chosen: OrderedDict[SessionKey, str] = OrderedDict()
        """Sessions whose wake lost, and who won: an agent request in one is refused (`not_chosen`)."""
        self.rooms: dict[str, str | None] = {}
        """Each device's room, from its retained `device.info`: wake words are arbitrated per room."""
        self.locales: dict[str, str] = {}
        """Each device's declared locale (its retained `device.info`): a request in another language is refused."""
        self.refused = 0
        self.on_refusal: Callable[[ErrorCode], None] | None = None
        """Hears the code of every refusal (the service's metrics)."""
        self.draining = False
        """Set by `drain`: new sessions are refused (`busy`), open ones finish."""
        self.flow = SessionFlow(
            checkout,
            audit=audit,
            send=self._send,
            refuse=self._refuse,
            in_session=self._in_session,
            confirm_timeout=confirm_timeout,
            checkout_timeout=checkout_timeout,
            keep_ended=keep_ended,
        )
        self.step_ups = StepUpDesk(
            checkout, self.flow.sessions, send=self._send, refuse=self._refuse, timeout=checkout_timeout
        )
        self.recovery = Recovery(
            checkout, send=self._send, refuse=self._refuse, record=self.flow.record, checkout_timeout=checkout_timeout
        )
        """Answers from the checkout's store what no session in memory holds; settles pending completions."""
        self.claim_book = ClaimBook(
            self.gateway_id,
            self.topics,
            settle=claim_settle,
            publish=self._publish_retained,
            spawn=self._spawn,
            replay=self._route,
            lost=self.flow.hand_over,
        )
        self.limits = limits or Limits()
        """What each device may send (`limits.py`); a device over them is refused, the others served."""
        self.limiter = DeviceLimiter(self.limits, self._refuse, awaited=self.flow.awaits_answer)
        self.quota = CheckoutQuota(self.limits.open_checkouts, self.flow.sessions, self._refuse)
        self.audio_intake = AudioIntake(self.limits.audio_streams, self.limits.audio_queue_chunks)
        self.admission = Admission(capacity)
        """Past its capacity the gateway refuses new sessions with `busy` (`admission.py`)."""
        self._locks: dict[SessionKey, asyncio.Lock] = {}
        self._waiting: dict[SessionKey, int] = {}
        """Handlers queued or running per session: a session's lock lives only while it has some."""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bus: MqttBus | None = None
        self._agent: RemoteAgent | None = None

    @property
    def bus(self) -> MqttBus:
        if self._bus is None:
            raise DeviceSdkError("the gateway is not started", ErrorCode.NOT_CONNECTED)
        return self._bus

    @property
    def sessions(self) -> dict[SessionKey, Session]:
        """The sessions of the devices served here, by (device_id, session_id)."""
        return self.flow.sessions

    @property
    def claims(self) -> dict[str, str]:
        """Which gateway serves each device, as the retained claims say."""
        return self.claim_book.claims

    @property
    def gateways_online(self) -> dict[str, bool]:
        """Each gateway's retained status: online or not."""
        return self.claim_book.gateways_online

    @property
    def offline_since(self) -> dict[str, float]:
        """When (monotonic) each device served here said it went offline."""
        return self.claim_book.offline_since

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        offline = GatewayStatus(gateway_id=self.gateway_id, online=False).encode()
        self._bus = MqttBus(self.url, self.gateway_id, will=(self.topics.gateway_status(self.gateway_id), offline))
        await self._bus.connect()
        try:
            self._bus.add_connect_hook(self._announce)
            self._agent = RemoteAgent(self._bus, self.gateway_id, topics=self.topics, timeout=self.agent_timeout)
            self.flow.agent = self._agent
            await self._agent.start()
            t = self.topics
            inbox = await self._bus.subscribe(
                t.all_gateways_status(),
                t.all_devices("controller"),
                t.all_devices("status"),
                t.all_devices("info"),
                t.all_devices("up"),
                t.all_devices("step_up"),
                t.all_devices("audio"),
            )
            await self._announce()
        except BaseException:
            await self.stop()
            raise
        self._spawn(self._dispatch(inbox))
        self._spawn(self._sweep())
        self._spawn(self.admission.run())
        self._spawn(self.recovery.run())
        log.info("gateway %s serving on %s", self.gateway_id, self._bus.url)

    async def stop(self) -> None:
        await self.flow.cancels.finish(self.checkout_timeout)  # a decline the device heard closes its checkout
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._agent is not None:
            await self._agent.stop()
        if self._bus is not None:
            with contextlib.suppress(DeviceSdkError):
                status = GatewayStatus(gateway_id=self.gateway_id, online=False)
                await self._bus.publish(self.topics.gateway_status(self.gateway_id), status.encode(), retain=True)
            await self._bus.close()

    async def drain(self, deadline: float) -> int:
        """Take no new session and wait up to `deadline` seconds for the open ones to end and their
        handlers (and so their commits) to finish; the sessions still open then."""
        self.draining = True
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline
        while (left := self._open()) or self._waiting:
            if loop.time() >= until:
                return left
            await asyncio.sleep(0.05)
        return 0

    def _open(self) -> int:
        """Sessions with a request on its way or a checkout open (a walk: for the drain only)."""
        return sum(session.state in OPEN for session in self.flow.sessions.values())

    async def _announce(self) -> None:
        """Publish this gateway's retained status, and again its claims (a restarted broker forgot them)."""
        status = GatewayStatus(gateway_id=self.gateway_id, online=True)
        await self._publish_retained(self.topics.gateway_status(self.gateway_id), status.encode())
        await self.claim_book.republish()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _in_session(self, key: SessionKey, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` after every earlier handler of the same session (asyncio locks are FIFO)."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._waiting[key] = self._waiting.get(key, 0) + 1

        async def run() -> None:
            try:
                async with lock:
                    try:
                        await coro
                    except DeviceSdkError as exc:
                        log.warning("session %s: %s", key, exc)
                    except Exception:
                        log.exception("session %s failed", key)
            finally:
                self._waiting[key] -= 1
                if not self._waiting[key]:  # no handler of the session left: the lock goes with the last
                    del self._waiting[key], self._locks[key]

        self._spawn(run())

    async def _sweep(self, every: float = 0.5, audio_every: float = 30.0) -> None:
        """Look at the sessions whose timers are due (`flow.sweep`: a heap, not a walk over all)."""
        audio_at = time.monotonic() + audio_every
        while True:
            await asyncio.sleep(every)
            t, mono = now(), time.monotonic()
            self.flow.sweep(t, mono, self.claim_book.gone(mono, self.offline_grace))
            if mono >= audio_at:
                audio_at = mono + audio_every
                self.audio_intake.forget(self.claim_book.serving)

    # inbound -----------------------------------------------------------------------------

    async def _dispatch(self, inbox: Subscription) -> None:
        async for received in inbox:
            try:
                self._route(received)
            except Exception:
                log.exception("could not route a message on %s", received.topic)

    def _route(self, received: Received) -> None:
        if received.topic.startswith(f"{self.topics.base}/gateway/"):
            try:
                self.claim_book.on_gateway_status(received.topic, received.payload)
            except ProtocolError as exc:
                self._refuse(None, exc, ref=received.topic)
            return
        try:
            device_id, leaf = self.topics.device_of(received.topic)
        except ProtocolError as exc:
            self._refuse(None, exc, ref=received.topic)
            return
        if leaf == "controller":
            try:
                self.claim_book.on_claim(device_id, received.payload)
            except ProtocolError as exc:
                self._refuse(None, exc, ref=received.topic)
            return
        if leaf == "info":
            self._on_info(device_id, received)
            return
        if not received.payload and received.retain:
            return  # a cleared retained message
        if not self.claim_book.admit(device_id, leaf, received):
            return
        if not self.limiter.admit_raw(device_id, leaf, received.payload):
            return
        if leaf == "status":
            try:
                self.claim_book.on_status(device_id, received.payload)
            except ProtocolError as exc:
                self._refuse(device_id, exc, ref="status")
            return
        if leaf == "audio":
            try:
                self.audio_intake.chunk(device_id, received.payload)
            except (ProtocolError, SessionError) as exc:
                self._refuse(device_id, exc, ref="audio")
            return
        try:
            message = decode(received.payload)
        except ProtocolError as exc:
            self._refuse(device_id, exc, ref=leaf)
            return
        if (leaf == "step_up") != isinstance(message, StepUp):  # a PIN on `up` is one a monitor read
            where = "only on the device's step_up topic" if leaf == "up" else "on up, not on step_up"
            wrong = ProtocolError(f"a {message.type} is sent {where}", ErrorCode.WRONG_TOPIC)
            self._refuse(device_id, wrong, ref=getattr(message, "checkout_id", message.type),
                         session_id=getattr(message, "session_id", None))  # fmt: skip
            return
        self.claim_book.heard(device_id)
        self._on_up(device_id, message)

    def _on_up(self, device_id: str, message: Any) -> None:
        if not self.limiter.admit_message(device_id, message):
            return
        if isinstance(message, Ping):
            pong = Pong(seq=message.seq, controller_id=self.gateway_id)
            self._spawn(self._send(device_id, pong, qos=0))
        elif isinstance(message, AgentRequest):
            if message.device_id != device_id:
                self._refuse(
                    device_id,
                    ProtocolError("device_id differs from the topic", ErrorCode.WRONG_TOPIC),
                    ref=message.request_id,
                    session_id=message.session_id,
                )
                return
            declared = self.locales.get(device_id)
            if declared is not None and _language(message.locale) != _language(declared):
                refused = ProtocolError(
                    f"a request in {message.locale} from a device that declared {declared}",
                    ErrorCode.UNSUPPORTED_LOCALE,
                )
                self._refuse(device_id, refused, ref=message.request_id, session_id=message.session_id)
                return
            winner = self._not_chosen.get((device_id, message.session_id))
            if winner is not None:
                lost = SessionError(f"{winner} took this wake word's session", ErrorCode.NOT_CHOSEN)
                self._refuse(device_id, lost, ref=message.request_id, session_id=message.session_id)
                return
            if self._refused_new(device_id, message):
                return
            if self.quota.take(device_id, message.session_id, ref=message.request_id):
                handled = self.quota.holding(device_id, message.session_id, self.flow.on_request(device_id, message))
                self._in_session((device_id, message.session_id), handled)
        elif isinstance(message, ConfirmationResult):
            key = self.flow.session_key(device_id, message.session_id)
            self._in_session(key, self._confirmation(device_id, key, message))
        elif isinstance(message, OrderStatus):
            key = self.flow.session_key(device_id, message.session_id)
            self._in_session(key, self.recovery.on_status(device_id, message))
        elif isinstance(message, HandOver):
            self._in_session((device_id, message.session_id), self.flow.on_hand_over(device_id, message))
        elif isinstance(message, StepUp):
            self._in_session((device_id, message.session_id), self.step_ups.on_step_up(device_id, message))
        elif isinstance(message, Wake):
            self._on_wake(device_id, message)
        elif isinstance(message, AudioStart | AudioStop):
            try:
                self.audio_intake.control(device_id, message)
            except SessionError as unknown:
                self._refuse(device_id, unknown, ref=message.type, session_id=message.session_id)
        elif isinstance(message, Transcript):
            log.info("%s heard %s%r", device_id, "" if message.final else "(partial) ", message.text)
        else:
            exc = ProtocolError(f"{message.type} is not sent by devices", ErrorCode.UNEXPECTED_MESSAGE)
            self._refuse(device_id, exc, ref=message.type)

    def _refused_new(self, device_id: str, request: AgentRequest) -> bool:
        """Whether a request that would open a new session is refused `busy`: the gateway is
        draining, or past its capacity (`admission.py`). A session already here is always served."""
        if (device_id, request.session_id) in self.flow.sessions:
            return False
        try:
            if self.draining:
                raise SessionError("this gateway is shutting down: ask again shortly", ErrorCode.BUSY)
            self.admission.check(len(self._waiting))
        except SessionError as busy:
            self._refuse(device_id, busy, ref=request.request_id, session_id=request.session_id)
            return True
        return False

    async def _confirmation(self, device_id: str, key: SessionKey, answer: ConfirmationResult) -> None:
        """The session's answer; for a session not held here (a restart, a take-over), the store's."""
        if self.flow.holds(key, answer.checkout_id):
            await self.flow.on_confirmation(device_id, answer)
        else:
            await self.recovery.on_confirmation(device_id, answer)

    def _refuse(
        self, device_id: str | None, exc: DeviceSdkError, *, ref: str | None = None, session_id: str | None = None
    ) -> None:
        self.refused += 1
        if self.on_refusal is not None:
            self.on_refusal(exc.code)
        log.info("refused %s from %s: %s", ref, device_id or "?", exc)
        error = Error(code=exc.code, text=exc.text[:2000], ref=ref and ref[:128], session_id=session_id)
        topic = self.topics.device_down(device_id) if device_id else self.topics.errors()
        self._spawn(self._publish(topic, error.encode()))

    # wake-word arbitration ---------------------------------------------------------------

    def _on_wake(self, device_id: str, wake: Wake) -> None:
        """Put the wake in its room's round; the round's opener closes it after the window."""
        done = self.arbiter.decided(device_id, wake.wake_id)
        if done is not None:
            self._spawn(self._send(device_id, done))  # a resend: the same answer
            return
        round_, opened = self.arbiter.offer(self.rooms.get(device_id), Contender(device_id, wake), time.monotonic())
        if opened:
            self._spawn(self._close_round(round_))

    async def _close_round(self, round_: Round) -> None:
        await asyncio.sleep(self.arbiter.window)
        results = self.arbiter.close(round_)
        won = round_.winner()
        log.info("wake in room %s: %s of %d device(s) opens a session", round_.room, won.device_id, len(results))
        await self.flow.record(
            "arbitration",
            device_id=won.device_id,
            session_id=won.wake.session_id,
            room=round_.room,
            contenders=[[c.device_id, c.wake.confidence, c.wake.energy_db] for c in round_.contenders],
        )
        for device_id, result in results:
            if not result.granted and result.winner != device_id:
                self._not_chosen[(device_id, result.session_id)] = result.winner
        while len(self._not_chosen) > 4096:
            self._not_chosen.popitem(last=False)
        for device_id, result in results:
            await self._send(device_id, result)

    def _on_info(self, device_id: str, received: Received) -> None:
        if not received.payload:
            self.rooms.pop(device_id, None)
            self.locales.pop(device_id, None)
            return
        try:
            info = decode_as(received.payload, DeviceInfo, device_id)
        except ProtocolError as exc:
            self._refuse(None, exc, ref=received.topic)
            return
        self.rooms[device_id] = info.room
        self.locales[device_id] = info.locale or "en-US"

    # audio -------------------------------------------------------------------------------

    def audio_streams(self) -> AsyncIterator[AudioStream]:
        """Every audio stream a served device opens, as it opens; iterate each for its chunks.

        Audio is kept only while someone iterates here; otherwise chunks are counted and dropped.
        """
        return self.audio_intake.streams()

    # outbound ----------------------------------------------------------------------------

    async def _send(self, device_id: str, message: WireMessage, qos: int = 1) -> None:
        await self._publish(self.topics.device_down(device_id), message.encode(), qos)

    async def _publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        try:
            await self.bus.publish(topic, payload, qos=qos)
        except DeviceSdkError as exc:
            log.warning("could not publish to %s: %s", topic, exc)

    async def _publish_retained(self, topic: str, payload: bytes) -> None:
        """Publish retained state (this gateway's status, its claims); a failure is the caller's to handle."""
        await self.bus.publish(topic, payload, retain=True)


def _language(tag: str) -> str:
    """The primary language of a BCP 47 tag: `en` for en-GB, `zh` for zh-Hans-CN."""
    return tag.split("-")[0].lower()
