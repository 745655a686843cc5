"""The gateway: serves devices on the bus, asks the agent core, and gates every checkout on the
device's own confirmation of exactly the proposal it presented.

One gateway controls a device at a time (a retained claim on the device's controller topic).
Each session's messages are handled one after another; different sessions run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.subscription import Received, Subscription
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.readback import confirmation_request
from device_sdk.media.audio import AudioStream, decode_chunk
from device_sdk.platform.agent import RemoteAgent
from device_sdk.platform.checkout.audit import AuditLog
from device_sdk.platform.checkout.backend import CheckoutBackend, Completion
from device_sdk.protocol.errors import CheckoutError, DeviceSdkError, ErrorCode, ProtocolError, SessionError
from device_sdk.protocol.fields import Decision, Outcome, new_id, now, sha256_hex
from device_sdk.protocol.messages import (
    AgentRequest,
    AudioStart,
    AudioStop,
    ConfirmationResult,
    ControllerClaim,
    DeviceInfo,
    DeviceStatus,
    Error,
    GatewayStatus,
    IssuedProposal,
    OrderResult,
    Ping,
    Pong,
    Transcript,
    Wake,
    decode,
)
from device_sdk.protocol.topics import Topics, check_id
from device_sdk.service import Service

from .arbitration import DEFAULT_WINDOW, Arbiter, Contender, Round
from .session import Session, State, Step

log = logging.getLogger(__name__)

SessionKey = tuple[str, str]
"""(device_id, session_id): session ids are the device's own, so they are unique per device."""
MAX_STREAMS = 64


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
        keep_ended: float = 600.0,
        offline_grace: float = 15.0,
        claim_settle: float = 0.1,
        checkout_timeout: float = 10.0,
        audit: AuditLog | None = None,
        wake_window: float = DEFAULT_WINDOW,
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
        self.offline_since: dict[str, float] = {}
        self.claim_settle = claim_settle
        self.checkout_timeout = checkout_timeout
        self.sessions: dict[SessionKey, Session] = {}
        self.arbiter = Arbiter(wake_window)
        self._not_chosen: OrderedDict[SessionKey, str] = OrderedDict()
        """Sessions whose wake lost, and who won: an agent request in one is refused (`not_chosen`)."""
        self.rooms: dict[str, str | None] = {}
        """Each device's room, from its retained `device.info`: wake words are arbitrated per room."""
        self.claims: dict[str, str] = {}
        self.gateways_online: dict[str, bool] = {}
        self.refused = 0
        self._ended_at: dict[SessionKey, float] = {}
        self._locks: dict[SessionKey, asyncio.Lock] = {}
        self._claiming: dict[str, list[Received]] = {}
        self._claim_echo: dict[str, asyncio.Event] = {}
        self._sweeping: set[SessionKey] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bus: MqttBus | None = None
        self._agent: RemoteAgent | None = None
        self._streams: dict[tuple[str, int], AudioStream] = {}
        self._new_streams: asyncio.Queue[AudioStream] = asyncio.Queue(8)
        self._audio_listeners = 0
        self._quiet_streams: dict[str, deque[int]] = {}

    @property
    def bus(self) -> MqttBus:
        if self._bus is None:
            raise DeviceSdkError("the gateway is not started", ErrorCode.NOT_CONNECTED)
        return self._bus

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        offline = GatewayStatus(gateway_id=self.gateway_id, online=False).encode()
        self._bus = MqttBus(self.url, self.gateway_id, will=(self.topics.gateway_status(self.gateway_id), offline))
        await self._bus.connect()
        try:
            self._bus.add_connect_hook(self._announce)
            self._agent = RemoteAgent(self._bus, self.gateway_id, topics=self.topics, timeout=self.agent_timeout)
            await self._agent.start()
            t = self.topics
            inbox = await self._bus.subscribe(
                t.all_gateways_status(),
                t.all_devices("controller"),
                t.all_devices("status"),
                t.all_devices("info"),
                t.all_devices("up"),
                t.all_devices("audio"),
            )
            await self._announce()
        except BaseException:
            await self.stop()
            raise
        self._spawn(self._dispatch(inbox))
        self._spawn(self._sweep())
        log.info("gateway %s serving on %s", self.gateway_id, self._bus.url)

    async def stop(self) -> None:
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

    async def _announce(self) -> None:
        """Publish this gateway's retained status, and again its claims (a restarted broker forgot them)."""
        status = GatewayStatus(gateway_id=self.gateway_id, online=True)
        await self.bus.publish(self.topics.gateway_status(self.gateway_id), status.encode(), retain=True)
        for device_id, holder in list(self.claims.items()):
            if holder == self.gateway_id:
                await self._publish_claim(device_id)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _in_session(self, key: SessionKey, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` after every earlier handler of the same session (asyncio locks are FIFO)."""
        lock = self._locks.setdefault(key, asyncio.Lock())

        async def run() -> None:
            async with lock:
                try:
                    await coro
                except DeviceSdkError as exc:
                    log.warning("session %s: %s", key, exc)
                except Exception:
                    log.exception("session %s failed", key)

        self._spawn(run())

    # inbound -----------------------------------------------------------------------------

    async def _dispatch(self, inbox: Subscription) -> None:
        async for received in inbox:
            try:
                self._route(received)
            except Exception:
                log.exception("could not route a message on %s", received.topic)

    def _route(self, received: Received) -> None:
        if received.topic.startswith(f"{self.topics.base}/gateway/"):
            self._on_gateway_status(received)
            return
        try:
            device_id, leaf = self.topics.device_of(received.topic)
        except ProtocolError as exc:
            self._refuse(None, exc, ref=received.topic)
            return
        if leaf == "controller":
            self._on_claim(device_id, received)
            return
        if leaf == "info":
            self._on_info(device_id, received)
            return
        if not received.payload and received.retain:
            return  # a cleared retained message
        if device_id in self._claiming:
            self._hold(device_id, leaf, received)
            return
        if leaf == "status" and not self._status_wants_service(device_id, received):
            return
        if not self._serves(device_id, received):
            return
        if leaf == "status":
            self._on_device_status(device_id, received)
            return
        if leaf == "audio":
            self._on_audio(device_id, received.payload)
            return
        try:
            message = decode(received.payload)
        except ProtocolError as exc:
            self._refuse(device_id, exc, ref=leaf)
            return
        self.offline_since.pop(device_id, None)
        self._on_up(device_id, message)

    def _on_up(self, device_id: str, message: Any) -> None:
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
            winner = self._not_chosen.get((device_id, message.session_id))
            if winner is not None:
                lost = SessionError(f"{winner} took this wake word's session", ErrorCode.NOT_CHOSEN)
                self._refuse(device_id, lost, ref=message.request_id, session_id=message.session_id)
                return
            self._in_session((device_id, message.session_id), self._on_request(device_id, message))
        elif isinstance(message, ConfirmationResult):
            self._in_session((device_id, message.session_id), self._on_confirmation(device_id, message))
        elif isinstance(message, Wake):
            self._on_wake(device_id, message)
        elif isinstance(message, AudioStart | AudioStop):
            self._on_audio_control(device_id, message)
        elif isinstance(message, Transcript):
            log.info("%s heard %s%r", device_id, "" if message.final else "(partial) ", message.text)
        else:
            exc = ProtocolError(f"{message.type} is not sent by devices", ErrorCode.UNEXPECTED_MESSAGE)
            self._refuse(device_id, exc, ref=message.type)

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
        await self._audit(
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
            return
        try:
            info = _decode_as(received.payload, DeviceInfo, device_id)
        except ProtocolError as exc:
            self._refuse(None, exc, ref=received.topic)
            return
        self.rooms[device_id] = info.room

    # audio -------------------------------------------------------------------------------

    def audio_streams(self) -> AsyncIterator[AudioStream]:
        """Every audio stream a served device opens, as it opens; iterate each for its chunks.

        Audio is kept only while someone iterates here; otherwise chunks are counted and dropped.
        """

        async def iterate() -> AsyncIterator[AudioStream]:
            self._audio_listeners += 1
            try:
                while True:
                    yield await self._new_streams.get()
            finally:
                self._audio_listeners -= 1

        return iterate()

    def _on_audio_control(self, device_id: str, message: AudioStart | AudioStop) -> None:
        key = (device_id, message.stream)
        if isinstance(message, AudioStop):
            stream = self._streams.pop(key, None)
            if stream is not None:
                stream.end(message.samples)
                self._quiet(device_id, message.stream)
            elif message.stream not in self._quiet_streams.get(device_id, ()):
                exc = SessionError(f"no audio stream {message.stream}", ErrorCode.UNKNOWN_STREAM)
                self._refuse(device_id, exc, ref=message.type, session_id=message.session_id)
            return
        if key in self._streams:
            self._streams.pop(key).end()
        while len(self._streams) >= MAX_STREAMS or sum(k[0] == device_id for k in self._streams) >= 4:
            oldest = next(k for k in self._streams if len(self._streams) >= MAX_STREAMS or k[0] == device_id)
            self._streams.pop(oldest).end()
        keep = self._audio_listeners > 0
        stream = AudioStream(device_id, message.session_id, message.stream, message.format, keep=keep)
        self._streams[key] = stream
        if keep:
            if self._new_streams.full():
                self._new_streams.get_nowait().end()
            self._new_streams.put_nowait(stream)

    def _quiet(self, device_id: str, stream: int) -> None:
        """Remember an ended stream: its late chunks (QoS 0 overtakes QoS 1) are dropped without an error."""
        self._quiet_streams.setdefault(device_id, deque(maxlen=16)).append(stream)

    def _on_audio(self, device_id: str, payload: bytes) -> None:
        try:
            chunk = decode_chunk(payload)
        except ProtocolError as exc:
            self._refuse(device_id, exc, ref="audio")
            return
        stream = self._streams.get((device_id, chunk.stream))
        if stream is None:
            if chunk.stream not in self._quiet_streams.get(device_id, ()):
                self._quiet(device_id, chunk.stream)  # one error per unknown stream, not one per chunk
                unknown = SessionError(f"no audio stream {chunk.stream}", ErrorCode.UNKNOWN_STREAM)
                self._refuse(device_id, unknown, ref="audio")
            return
        stream.feed(chunk)
        if stream.ended:
            self._streams.pop((device_id, chunk.stream), None)
            self._quiet(device_id, chunk.stream)

    def _status_wants_service(self, device_id: str, received: Received) -> bool:
        """An online (or unreadable) status asks for a controller; an offline one only concerns its holder."""
        try:
            status = decode(received.payload)
        except ProtocolError:
            return True
        if isinstance(status, DeviceStatus) and not status.online:
            if self.claims.get(device_id) == self.gateway_id:
                self.offline_since.setdefault(device_id, time.monotonic())
            return False
        return True

    def _on_device_status(self, device_id: str, received: Received) -> None:
        try:
            _decode_as(received.payload, DeviceStatus, device_id)
        except ProtocolError as exc:
            self._refuse(device_id, exc, ref="status")
            return
        self.offline_since.pop(device_id, None)

    def _on_gateway_status(self, received: Received) -> None:
        try:
            gateway_id = self.topics.gateway_of(received.topic)
            if not received.payload:
                return
            status = _decode_as(received.payload, GatewayStatus, gateway_id)
        except ProtocolError as exc:
            self._refuse(None, exc, ref=received.topic)
            return
        self.gateways_online[gateway_id] = status.online

    def _on_claim(self, device_id: str, received: Received) -> None:
        if not received.payload:
            self.claims.pop(device_id, None)
            return
        try:
            claim = _decode_as(received.payload, ControllerClaim, device_id)
        except ProtocolError as exc:
            self._refuse(None, exc, ref=received.topic)
            return
        if self.claims.get(device_id) == self.gateway_id and claim.controller_id != self.gateway_id:
            log.info("device %s is now served by %s", device_id, claim.controller_id)
            for key, session in self.sessions.items():
                if session.device_id == device_id and session.state is State.AWAITING_CONFIRMATION:
                    self._sweep_task(key, self._expire(session, "another gateway took over the device"))
        self.claims[device_id] = claim.controller_id
        if claim.controller_id == self.gateway_id and device_id in self._claim_echo:
            self._claim_echo[device_id].set()

    def _serves(self, device_id: str, received: Received) -> bool:
        """True when this gateway controls the device. If no live gateway does, claim it and hold
        its messages until the claims have settled: every gateway sees the claims in the broker's
        order, and the one delivered last wins."""
        holder = self.claims.get(device_id)
        if holder == self.gateway_id:
            return True
        if holder is not None and self.gateways_online.get(holder, False):
            return False
        self._claiming[device_id] = [received]
        self._spawn(self._claim(device_id))
        return False

    def _hold(self, device_id: str, leaf: str, received: Received) -> None:
        """Keep a message of a device being claimed: up to 100 messages and, apart, 100 audio chunks
        (10 s at 100 ms), so a burst of audio cannot push out a request."""
        held = self._claiming[device_id]
        audio = sum(r.topic.endswith("/audio") for r in held)
        if (leaf == "audio" and audio < 100) or (leaf != "audio" and len(held) - audio < 100):
            held.append(received)

    async def _claim(self, device_id: str) -> None:
        echo = self._claim_echo.setdefault(device_id, asyncio.Event())
        echo.clear()
        try:
            await self._publish_claim(device_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await echo.wait()
            await asyncio.sleep(self.claim_settle)
        except DeviceSdkError as exc:
            log.warning("could not claim %s (%s); its next message tries again", device_id, exc)
        finally:
            held = self._claiming.pop(device_id, [])
            self._claim_echo.pop(device_id, None)
        if self.claims.get(device_id) == self.gateway_id:
            log.info("serving device %s", device_id)
            for received in held:
                self._route(received)

    async def _publish_claim(self, device_id: str) -> None:
        claim = ControllerClaim(device_id=device_id, controller_id=self.gateway_id, claimed_at=now())
        await self.bus.publish(self.topics.device_controller(device_id), claim.encode(), retain=True)

    def _refuse(
        self, device_id: str | None, exc: DeviceSdkError, *, ref: str | None = None, session_id: str | None = None
    ) -> None:
        self.refused += 1
        log.info("refused %s from %s: %s", ref, device_id or "?", exc)
        error = Error(code=exc.code, text=exc.text[:2000], ref=ref and ref[:128], session_id=session_id)
        topic = self.topics.device_down(device_id) if device_id else self.topics.errors()
        self._spawn(self._publish(topic, error.encode()))

    # sessions ----------------------------------------------------------------------------

    async def _on_request(self, device_id: str, request: AgentRequest) -> None:
        key = (device_id, request.session_id)
        session = self.sessions.get(key)
        if session is None:
            session = self.sessions[key] = Session(request.session_id, device_id)
        superseded = session.offer if session.state is State.AWAITING_CONFIRMATION else None
        try:
            step = session.on_request(device_id, request.request_id)
        except SessionError as exc:
            self._refuse(device_id, exc, ref=request.request_id, session_id=request.session_id)
            return
        if step is Step.RESEND_OFFER and session.offer is not None:
            await self._send(device_id, session.offer)
            return
        if step is Step.RESEND_RESULT and session.result is not None:
            await self._send(device_id, session.result)
            return
        if step is not Step.ASK_AGENT:
            return
        if superseded is not None:
            await self._close_checkout(superseded.checkout_id, Outcome.NOT_CONFIRMED, "superseded by a new request")
        log.info("session %s: %s asks %r", request.session_id, device_id, request.text)
        issued: IssuedProposal | None = None
        try:
            issued = await self._ask_agent(device_id, request)
            await self._audit(
                "proposal",
                session=session,
                checkout_id=issued.proposal.checkout_id,
                checkout_hash=issued.checkout_hash,
                request=request.text,
                lines=[[line.sku, line.qty, line.line_total_minor] for line in issued.proposal.lines],
                total_minor=issued.proposal.total_minor,
                currency=issued.proposal.currency,
                payee=issued.proposal.merchant.id,
            )
            terms = await self.checkout.open(issued)
            offer = confirmation_request(
                issued.proposal, issued.checkout_hash, request.request_id, terms, now() + self.confirm_timeout
            )
        except Exception as exc:
            session.on_agent_failed(request.request_id)
            if issued is not None:
                await self._close_checkout(issued.proposal.checkout_id, Outcome.NOT_CONFIRMED, "not offered")
            if isinstance(exc, DeviceSdkError):
                refusal = exc
            else:
                log.exception("session %s: no offer", request.session_id)
                refusal = DeviceSdkError(f"could not make an offer: {type(exc).__name__}", ErrorCode.INTERNAL)
            self._refuse(device_id, refusal, ref=request.request_id, session_id=request.session_id)
            return
        if session.on_offer(request.request_id, issued, offer):
            await self._audit(
                "rendering",
                session=session,
                checkout_id=offer.checkout_id,
                text=offer.readback,
                display_digest=offer.display_digest,
                modalities=[m.value for m in offer.consent.modalities],
            )
            await self._send(device_id, offer)

    async def _ask_agent(self, device_id: str, request: AgentRequest) -> IssuedProposal:
        """Ask the agent under a request id of the gateway's own, so devices' ids never collide."""
        assert self._agent is not None
        issued = await self._agent.propose(request.model_copy(update={"request_id": new_id("ar")}))
        proposal = issued.proposal
        if (proposal.device_id, proposal.session_id) != (device_id, request.session_id):
            raise CheckoutError("the agent proposed for another device or session", ErrorCode.BAD_PROPOSAL)
        return issued

    async def _on_confirmation(self, device_id: str, answer: ConfirmationResult) -> None:
        session = self.sessions.get((device_id, answer.session_id))
        try:
            if session is None:
                raise SessionError(f"this device has no session {answer.session_id}", ErrorCode.UNKNOWN_CHECKOUT)
            step = session.on_confirmation(device_id, answer, now())
        except SessionError as exc:
            await self._audit(
                "refusal",
                device_id=device_id,
                session_id=answer.session_id,
                checkout_id=answer.checkout_id,
                stage="confirmation",
                code=exc.code.value,
                reason=exc.text,
            )
            self._refuse(device_id, exc, ref=answer.checkout_id, session_id=answer.session_id)
            return
        if step in (Step.COMPLETE, Step.CANCEL):
            retry = step is Step.COMPLETE and session.confirmed is not answer
            await self._audit(
                "confirmation",
                session=session,
                checkout_id=answer.checkout_id,
                completes="the first confirmation, whose completion got no answer" if retry else None,
                decision=answer.decision.value,
                modality=answer.modality.value,
                display_digest=answer.display_digest,
                heard=answer.heard,
                mandate_sha256=sha256_hex(answer.mandate) if answer.mandate else None,
            )
        if step is Step.RESEND_RESULT and session.result is not None:
            await self._send(device_id, session.result)
            return
        if step is Step.IGNORE or session.offer is None:
            return
        offer = session.offer
        result: OrderResult | None
        if step is Step.COMPLETE:
            result = await self._complete(session)
            if result is None:
                return
        elif answer.decision is Decision.DECLINE and now() <= offer.expires_at:
            result = await self._cancel(session, Outcome.DECLINED, "the user declined on the device")
        else:
            reason = "no confirmation from the user" if now() <= offer.expires_at else "the confirmation expired"
            result = await self._cancel(session, Outcome.NOT_CONFIRMED, reason)
        await self._end(session, result)
        log.info("session %s: %s", session.session_id, result.outcome)
        await self._send(device_id, result)

    async def _complete(self, session: Session, attempts: int = 3) -> OrderResult | None:
        """Complete with the session's confirmation, retrying a checkout that gives no answer under the
        same idempotency key; None when it still gave none (the session waits for the next try)."""
        assert session.offer is not None
        assert session.confirmed is not None
        completion = Completion(
            checkout_id=session.offer.checkout_id,
            checkout_hash=session.offer.checkout_hash,
            device_id=session.device_id,
            session_id=session.session_id,
            confirmation=session.confirmed,
            idempotency_key=session.idempotency_key,
        )
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(self.checkout_timeout):
                    return await self.checkout.complete(completion)
            except CheckoutError as exc:
                return OrderResult(
                    session_id=completion.session_id,
                    checkout_id=completion.checkout_id,
                    outcome=Outcome(exc.outcome),
                    reason=f"{exc.code}: {exc.text}",
                )
            except Exception as exc:
                log.warning(
                    "session %s: the checkout gave no answer (%r), try %d", session.session_id, exc, attempt + 1
                )
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.2 * 2**attempt)
        session.on_complete_failed()
        error = DeviceSdkError("the checkout gave no answer yet; the order is being retried", ErrorCode.INTERNAL)
        self._refuse(session.device_id, error, ref=completion.checkout_id, session_id=session.session_id)
        return None

    async def _retry(self, session: Session) -> None:
        """The sweeper's retry of a completion that got no answer."""
        if not session.needs_retry(time.monotonic(), 0.0):
            return
        session.state = State.COMPLETING
        result = await self._complete(session)
        if result is not None:
            await self._end(session, result)
            log.info("session %s: %s (after a retry)", session.session_id, result.outcome)
            await self._send(session.device_id, result)

    async def _close_checkout(self, checkout_id: str, outcome: Outcome, reason: str) -> None:
        """Cancel; a checkout that fails to hear it keeps an open checkout that nothing will complete."""
        try:
            async with asyncio.timeout(self.checkout_timeout):
                await self.checkout.cancel(checkout_id, outcome, reason)
        except Exception as exc:
            log.warning("could not cancel checkout %s: %r", checkout_id, exc)

    async def _cancel(self, session: Session, outcome: Outcome, reason: str) -> OrderResult:
        assert session.offer is not None
        await self._close_checkout(session.offer.checkout_id, outcome, reason)
        return OrderResult(session_id=session.session_id, checkout_id=session.offer.checkout_id, outcome=outcome,
                           reason=reason)  # fmt: skip

    async def _end(self, session: Session, result: OrderResult) -> None:
        """End the session with `result`, recorded in the audit log before the device is told."""
        session.end(result)
        self._ended_at[(session.device_id, session.session_id)] = time.monotonic()
        await self._audit(
            "result",
            session=session,
            checkout_id=result.checkout_id,
            outcome=result.outcome.value,
            order_id=result.order_id,
            reason=result.reason,
        )

    async def _audit(self, kind: str, *, session: Session | None = None, **fields: Any) -> None:
        """Record a step of a session in the audit log, when the gateway keeps one."""
        if self.audit is None:
            return
        if session is not None:
            fields.update(device_id=session.device_id, session_id=session.session_id)
        try:
            await self.audit.record(kind, **fields)
        except Exception as exc:
            log.error("could not write the audit record %s: %r", kind, exc)

    async def _expire(self, session: Session, reason: str) -> None:
        if session.state is not State.AWAITING_CONFIRMATION or session.confirmed is not None:
            return  # answered meanwhile, or a confirmation whose completion is being retried
        result = await self._cancel(session, Outcome.NOT_CONFIRMED, reason)
        await self._end(session, result)
        log.info("session %s: not_confirmed (%s)", session.session_id, reason)
        await self._send(session.device_id, result)

    def _sweep_task(self, key: SessionKey, coro: Coroutine[Any, Any, None]) -> None:
        """Queue one housekeeping task per session at a time."""
        if key in self._sweeping:
            coro.close()
            return
        self._sweeping.add(key)

        async def run() -> None:
            try:
                await coro
            finally:
                self._sweeping.discard(key)

        self._in_session(key, run())

    async def _sweep(self, every: float = 0.5, retry_after: float = 2.0) -> None:
        while True:
            await asyncio.sleep(every)
            t, mono = now(), time.monotonic()
            gone = {d for d, since in self.offline_since.items() if mono - since > self.offline_grace}
            for key, session in list(self.sessions.items()):
                if session.expired(t):
                    self._sweep_task(key, self._expire(session, "the confirmation expired"))
                elif session.needs_retry(mono, retry_after):
                    self._sweep_task(key, self._retry(session))
                elif session.device_id in gone and session.state is State.AWAITING_CONFIRMATION:
                    if session.confirmed is None:
                        self._sweep_task(key, self._expire(session, "the device went offline"))
                elif (session.idle_since(mono) or 0.0) > self.keep_ended:
                    del self.sessions[key]
            for key, ended in list(self._ended_at.items()):
                if mono - ended > self.keep_ended:
                    del self._ended_at[key]
                    self.sessions.pop(key, None)
            for key, lock in list(self._locks.items()):
                if key not in self.sessions and not lock.locked():
                    del self._locks[key]
            for device_id in list(self._quiet_streams):
                if self.claims.get(device_id) != self.gateway_id:
                    del self._quiet_streams[device_id]

    # outbound ----------------------------------------------------------------------------

    async def _send(self, device_id: str, message: Any, qos: int = 1) -> None:
        await self._publish(self.topics.device_down(device_id), message.encode(), qos)

    async def _publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        try:
            await self.bus.publish(topic, payload, qos=qos)
        except DeviceSdkError as exc:
            log.warning("could not publish to %s: %s", topic, exc)


M = TypeVar("M", DeviceStatus, DeviceInfo, GatewayStatus, ControllerClaim)


def _decode_as(payload: bytes, kind: type[M], topic_id: str) -> M:
    """A retained state message of `kind` that names the device or gateway of its own topic."""
    message = decode(payload)
    if not isinstance(message, kind):
        raise ProtocolError(f"this topic carries {kind.model_fields['type'].default}", ErrorCode.UNEXPECTED_MESSAGE)
    named = message.gateway_id if isinstance(message, GatewayStatus) else message.device_id
    if named != topic_id:
        raise ProtocolError(f"the message names {named}, its topic {topic_id}", ErrorCode.WRONG_TOPIC)
    return message
