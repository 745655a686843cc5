"""The device side: what a speaker, a pair of glasses or a phone links to speak the protocol.

`DeviceClient` keeps a retained status with a last will, heartbeats its controller, and runs
sessions: `ask` sends what the user said and returns the `Offer` to present; `answer` sends
the user's decision and returns the `OrderResult`. Messages are resent until answered, so a
broker restart in the middle of a session delays it instead of losing it; the gateway answers
repeats with the same reply, so nothing is done twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from device_sdk.bounded import DropOldest
from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.subscription import Received, Subscription
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey, b64url
from device_sdk.consent.mandate import mandate_for
from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.media.audio import MAX_CHUNK, AudioChunk
from device_sdk.media.images import image_ref, strip_metadata
from device_sdk.protocol.errors import BusError, DeviceSdkError, ErrorCode, ProtocolError, RemoteError, RequestTimeout
from device_sdk.protocol.fields import Capability, Decision, DeviceKind, Modality, new_id
from device_sdk.protocol.messages import (
    AgentRequest,
    AudioFormat,
    AudioStart,
    AudioStop,
    ConfirmationRequest,
    ConfirmationResult,
    ControllerClaim,
    DeviceInfo,
    DeviceStatus,
    Error,
    HandedOver,
    HandOver,
    OrderResult,
    OrderStatus,
    OrderStatusResult,
    Ping,
    Pong,
    Transcript,
    Wake,
    WakeResult,
    decode,
)
from device_sdk.protocol.step_up import StepUp, StepUpResult
from device_sdk.protocol.topics import Topics, check_id
from device_sdk.service import Service

from .chunks import each_chunk
from .edge_policy import EdgeGuard
from .offer import Offer, outcome
from .sessions import Waiter, running

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthEvent:
    """The controller stopped answering heartbeats (alive=False), or answers again."""

    alive: bool
    controller_id: str | None


class DeviceClient(Service):
    """One device on the bus. Use as `async with DeviceClient(url, "speaker-1", key=key) as device:`.

    `key` is the device's Ed25519 signing key (registered with the checkout's verifier): with it,
    every confirmation carries a consent mandate signed on the device; without it, none does, and
    the checkout refuses to order.
    """

    def __init__(
        self,
        url: BrokerUrl | str,
        device_id: str,
        *,
        kind: DeviceKind = DeviceKind.SPEAKER,
        capabilities: Sequence[Capability] = (Capability.MIC, Capability.AUDIO_OUT, Capability.TEXT),
        firmware: str | None = None,
        room: str | None = None,
        locale: str = DEFAULT_LOCALE,
        topics: Topics | None = None,
        heartbeat: float = 30.0,
        pong_timeout: float = 75.0,
        resend_after: float = 3.0,
        key: SigningKey | None = None,
        edge_policy: EdgeGuard | str | Path | None = None,
    ) -> None:
        self.url = url
        self.device_id = check_id(device_id, "device id")
        self.key = key
        self.edge = EdgeGuard.load(edge_policy) if isinstance(edge_policy, str | Path) else edge_policy
        """The device's own limits (`edge_policy.py`): checked before an offer is presented and signed."""
        self.locale = locale_for(locale).tag
        """The language its user speaks and reads: sent with every request, the read-back's language."""
        self.topics = topics or Topics()
        self.controller_id: str | None = None
        self.controller_alive = False
        self.heartbeat = heartbeat
        self.pong_timeout = pong_timeout
        self.resend_after = resend_after
        self._status = DeviceStatus(
            device_id=device_id, online=True, kind=kind, capabilities=list(capabilities), firmware=firmware
        )
        self.info = DeviceInfo(
            device_id=device_id,
            kind=kind,
            capabilities=list(capabilities),
            firmware=firmware,
            room=room,
            locale=None if locale == DEFAULT_LOCALE else locale,
            public_key=b64url(key.public.raw) if key is not None else None,
        )
        """What the device is: retained on its info topic, and its zeroconf TXT record when advertised."""
        self._waiters: dict[str, list[Waiter]] = {}
        self._awaiting_result: dict[str, Waiter] = {}
        """Result waiters that `hand_over` set before it sent, by checkout id, for `result`."""
        self._presented: dict[str, Offer] = {}
        """Offers returned by `ask` whose session has not ended (`session_running`), by checkout id."""
        self._events: DropOldest[Any] = DropOldest(1000)
        self._last_pong: float = 0.0
        self._ping_seq = 0
        self._stream_tag = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bus: MqttBus | None = None

    @property
    def bus(self) -> MqttBus:
        if self._bus is None:
            raise BusError("the device is not connected")
        return self._bus

    async def start(self) -> None:
        """Connect, publish the online status (retained, with the offline last will), start heartbeats."""
        offline = self._status.model_copy(update={"online": False}).encode()
        self._bus = MqttBus(
            self.url, f"dev-{self.device_id}", will=(self.topics.device_status(self.device_id), offline)
        )
        await self._bus.connect()
        try:
            inbox = await self._bus.subscribe(
                self.topics.device_down(self.device_id), self.topics.device_controller(self.device_id)
            )
            self._bus.add_connect_hook(self._announce)
            await self._announce()
        except BaseException:
            await self._bus.close()
            raise
        self._spawn(self._receive(inbox))
        if self.heartbeat > 0:
            self._spawn(self._heartbeat())

    async def stop(self) -> None:
        """Say offline (a clean goodbye fires no will) and disconnect."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._bus is not None:
            with contextlib.suppress(DeviceSdkError):
                offline = self._status.model_copy(update={"online": False})
                await self._bus.publish(
                    self.topics.device_status(self.device_id), offline.encode(), retain=True, timeout=2.0
                )
            await self._bus.close()

    async def _announce(self) -> None:
        await self.bus.publish(self.topics.device_info(self.device_id), self.info.encode(), retain=True)
        await self.bus.publish(self.topics.device_status(self.device_id), self._status.encode(), retain=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # sessions ----------------------------------------------------------------------------

    async def ask(
        self,
        text: str,
        *,
        session_id: str | None = None,
        image_ref: str | None = None,
        locale: str | None = None,
        timeout: float = 30.0,
    ) -> Offer:
        """Send what the user asked for; return the offer to present, or raise `RemoteError`."""
        request = AgentRequest(
            request_id=new_id("req"),
            device_id=self.device_id,
            session_id=session_id or new_id("ses"),
            text=text,
            image_ref=image_ref,
            locale=locale or self.locale,
        )
        reply = await self._exchange(
            request.session_id,
            request.encode(),
            lambda m: isinstance(m, ConfirmationRequest) and m.request_id == request.request_id,
            request.request_id,
            timeout,
        )
        offer = Offer.checked(reply)
        if self.edge is not None:  # refused: declined to the gateway with its rule, never presented
            await self.edge.hold(offer, lambda rule: self.answer(offer, Decision.DECLINE, declined_for=rule,
                                                                 timeout=timeout))  # fmt: skip
        self._presented[offer.request.checkout_id] = offer
        return offer

    @property
    def session_running(self) -> bool:
        """Whether a session runs on the device: an offer presented awaiting its answer, or a request in
        flight (`sessions.running`). A suggestion offered meanwhile is declined as `busy`."""
        return running(self._waiters, self._presented)

    async def answer(
        self,
        offer: Offer,
        decision: Decision,
        *,
        modality: Modality = Modality.VOICE,
        heard: str | None = None,
        presented: str | None = None,
        mandate: str | None = None,
        declined_for: str | None = None,
        timeout: float = 30.0,
    ) -> OrderResult:
        """Send the user's decision on `offer`; return how the session ended.

        `presented` is the text the device actually gave the user (default: the read-back);
        its digest goes with the answer and into the mandate, so a confirmation of anything else
        is refused. A confirmation is signed with the device's key unless `mandate` is given.
        """
        request = offer.request
        if decision is not Decision.CONFIRM and mandate is not None:
            raise ProtocolError("a consent mandate goes only with a confirmation", ErrorCode.BAD_MESSAGE)
        if declined_for is not None and decision is not Decision.DECLINE:
            raise ProtocolError("declined_for goes only with a decline", ErrorCode.BAD_MESSAGE)
        if decision is Decision.CONFIRM and self.edge is not None:
            self.edge.check(offer)

        def make() -> ConfirmationResult:  # the first time only: a retry resends it, key and mandate alike
            signed = self.sign(offer, modality, presented=presented) if decision is Decision.CONFIRM else None
            return ConfirmationResult(session_id=request.session_id, checkout_id=request.checkout_id,
                                      checkout_hash=request.checkout_hash, decision=decision, modality=modality,
                                      display_digest=offer.digest(presented), heard=heard,
                                      mandate=mandate or signed, declined_for=declined_for)  # fmt: skip

        async def send(answer: ConfirmationResult, within: float) -> OrderResult:
            answers = lambda m: isinstance(m, OrderResult) and m.checkout_id == request.checkout_id  # noqa: E731
            reply: OrderResult = await self._exchange(request.session_id, answer.encode(), answers,
                                                      request.checkout_id, within)  # fmt: skip
            return reply

        answer = offer.answer(self.device_id, (decision, modality, heard, presented, mandate, declined_for), make)
        result = await outcome(send, lambda within: self.order_status(offer, timeout=within), answer, timeout,
                               2 * self.resend_after)  # fmt: skip
        self._presented.pop(request.checkout_id, None)
        if self.edge is not None:
            self.edge.count(result)
        return result

    async def order_status(self, offer: Offer, *, timeout: float = 10.0) -> OrderStatusResult:
        """How the checkout of `offer` stands, as any gateway reads it from the store: `open`,
        `pending` (its order being placed) or `ended` with the session's `result`."""
        r = offer.request
        ask = OrderStatus(session_id=r.session_id, checkout_id=r.checkout_id)
        answers = lambda m: isinstance(m, OrderStatusResult) and m.checkout_id == r.checkout_id  # noqa: E731
        reply: OrderStatusResult = await self._exchange(r.session_id, ask.encode(), answers, r.checkout_id, timeout)
        return reply

    async def hand_over(self, offer: Offer, *, timeout: float = 30.0) -> str:
        """Hand `offer` to the phone paired with this device at provisioning, for the user to confirm
        on its sheet; returns that phone's id, or raises `RemoteError` (`not_paired`, ...). The
        session's result then comes to both devices: `result` waits for it (however soon it came)."""
        request = offer.request
        waiter = self._result_waiter(request)
        handing = HandOver(
            session_id=request.session_id, checkout_id=request.checkout_id, checkout_hash=request.checkout_hash
        )
        try:
            reply: HandedOver = await self._exchange(
                request.session_id,
                handing.encode(),
                lambda m: isinstance(m, HandedOver) and m.checkout_id == request.checkout_id,
                request.checkout_id,
                timeout,
            )
        except BaseException:
            self._drop_waiter(request.session_id, waiter)
            raise
        self._awaiting_result[request.checkout_id] = waiter
        return reply.to_device

    async def result(self, offer: Offer, *, timeout: float) -> OrderResult:
        """Wait, sending nothing, for how the session of `offer` ended (after `hand_over`)."""
        request = offer.request
        waiter = self._awaiting_result.pop(request.checkout_id, None) or self._result_waiter(request)
        try:
            async with asyncio.timeout(timeout):
                reply = await waiter.reply
        except TimeoutError:
            raise RequestTimeout(f"no result in session {request.session_id} within {timeout} s") from None
        finally:
            self._drop_waiter(request.session_id, waiter)
        if isinstance(reply, Error):
            raise RemoteError(reply.text, reply.code)
        result: OrderResult = reply
        self._presented.pop(request.checkout_id, None)
        if self.edge is not None:
            self.edge.count(result)
        return result

    def _result_waiter(self, request: ConfirmationRequest) -> Waiter:
        waiter = Waiter(lambda m: isinstance(m, OrderResult) and m.checkout_id == request.checkout_id, "")
        self._waiters.setdefault(request.session_id, []).append(waiter)
        return waiter

    def _drop_waiter(self, session_id: str, waiter: Waiter) -> None:
        waiters = self._waiters.get(session_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(session_id, None)

    async def step_up(self, offer: Offer, pin: str, *, timeout: float = 30.0) -> str:
        """The PIN said or typed for `offer`, sent on this device's `step_up` topic (only gateways read it)
        and checked by the platform (tries are limited): the proof to sign into the `voice_pin` mandate
        (`sign(..., step_up=)`), or `RemoteError` (`step_up_failed`...)."""
        r = offer.request
        message = StepUp(step_up_id=new_id("su"), session_id=r.session_id, checkout_id=r.checkout_id,
                         checkout_hash=r.checkout_hash, pin=pin)  # fmt: skip
        answers = lambda m: isinstance(m, StepUpResult) and m.checkout_id == r.checkout_id  # noqa: E731
        reply: StepUpResult = await self._exchange(r.session_id, message.encode(), answers, r.checkout_id, timeout,
                                                   topic=self.topics.device_step_up(self.device_id))  # fmt: skip
        return reply.proof

    def sign(self, offer: Offer, modality: Modality, *, presented: str | None = None, step_up: str | None = None,
             initiated_by: Literal["agent"] | None = None) -> str | None:  # fmt: skip
        """The consent mandate for `offer` by `modality`, with the `step_up` proof for `voice_pin`, and
        `initiated_by="agent"` for an answer to a suggestion (None: no key)."""
        if self.edge is not None:
            self.edge.check(offer)  # never signs what breaks the device's own limits
        if self.key is None:
            return None
        return mandate_for(offer.request, self.key, device_id=self.device_id, modality=modality,
                           display_digest=offer.digest(presented), step_up=step_up,
                           initiated_by=initiated_by)  # fmt: skip

    async def _exchange(
        self, session_id: str, payload: bytes, answers: Callable[[Any], bool], ref: str, timeout: float,
        *, topic: str | None = None,
    ) -> Any:  # fmt: skip
        """Publish `payload` on `topic` (default: the up topic), resending it until the message that `answers`
        it, or an error about `ref`. Several calls may wait in one session; each gets only its own answer."""
        topic = topic or self.topics.device_up(self.device_id)
        waiter = Waiter(answers, ref)
        self._waiters.setdefault(session_id, []).append(waiter)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RequestTimeout(f"no reply in session {session_id} within {timeout} s")
                with contextlib.suppress(BusError, RequestTimeout):
                    await self.bus.publish(topic, payload, timeout=remaining)
                try:
                    async with asyncio.timeout(min(self.resend_after, max(deadline - loop.time(), 0.01))):
                        reply = await asyncio.shield(waiter.reply)
                except TimeoutError:
                    log.debug("session %s: no reply yet, sending again", session_id)
                    continue
                if isinstance(reply, Error):
                    raise RemoteError(reply.text, reply.code)
                return reply
        finally:
            self._drop_waiter(session_id, waiter)

    async def wake(
        self, confidence: float, energy_db: float, *, session_id: str | None = None, timeout: float = 5.0
    ) -> WakeResult:
        """Say the wake word was heard (with the detector's confidence and its loudness in dBFS) and
        wait for the arbitration: open `result.session_id` when `result.granted`, else go back to
        listening, another device of the room has the session."""
        wake = Wake(
            wake_id=new_id("wk"),
            session_id=session_id or new_id("ses"),
            confidence=confidence,
            energy_db=max(-120.0, min(0.0, energy_db)),
        )
        answers = lambda m: isinstance(m, WakeResult) and m.wake_id == wake.wake_id  # noqa: E731
        reply: WakeResult = await self._exchange(wake.session_id, wake.encode(), answers, wake.wake_id, timeout)
        return reply

    async def send_image(self, jpeg: bytes, *, timeout: float = 10.0) -> str:
        """Strip the image's metadata (EXIF, GPS, comments) and publish it for the agent; return the
        reference to pass as `ask(..., image_ref=...)`."""
        clean = strip_metadata(jpeg)
        await self.bus.publish(self.topics.device_image(self.device_id), clean, qos=1, timeout=timeout)
        return image_ref(clean)

    async def transcript(self, session_id: str, text: str, *, final: bool, confidence: float | None = None) -> None:
        """Tell the gateway what the device's recogniser heard (logged and on the timeline): final
        transcripts at QoS 1, partials at QoS 0."""
        message = Transcript(session_id=session_id, text=text, final=final, confidence=confidence)
        await self.bus.publish(self.topics.device_up(self.device_id), message.encode(), qos=1 if final else 0)

    async def stream_audio(
        self,
        session_id: str,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        fmt: AudioFormat | None = None,
    ) -> int:
        """Send PCM chunks (64 to 200 ms each is best) for a session; return how many samples went out.

        `audio.start` and `audio.stop` go at QoS 1 on the up topic, the chunks at QoS 0 on the
        audio topic, each stamped with its offset in samples since the start.
        """
        fmt = fmt or AudioFormat()
        self._stream_tag = (self._stream_tag + 1) & 0xFFFF
        tag, seq, offset = self._stream_tag, 0, 0
        up, audio = self.topics.device_up(self.device_id), self.topics.device_audio(self.device_id)
        await self.bus.publish(up, AudioStart(session_id=session_id, stream=tag, format=fmt).encode())
        source: AsyncIterator[bytes] = each_chunk(chunks)
        async for pcm in source:
            if len(pcm) % fmt.width or len(pcm) + 16 > MAX_CHUNK:
                raise ProtocolError(f"a chunk of {len(pcm)} bytes is not whole samples under {MAX_CHUNK}",
                                    ErrorCode.BAD_AUDIO)  # fmt: skip
            await self.bus.publish(audio, AudioChunk(tag, seq, offset, bytes(pcm)).encode(), qos=0)
            seq, offset = seq + 1, offset + len(pcm) // fmt.width
        await self.bus.publish(up, AudioStop(session_id=session_id, stream=tag, samples=offset).encode())
        return offset

    # inbound and heartbeat ---------------------------------------------------------------

    def events(self) -> AsyncIterator[Any]:
        """Messages that belong to no waiting call (errors, late results) and `HealthEvent`s;
        the last 1,000 are kept for a slow reader."""
        return self._events

    def _event(self, event: Any) -> None:
        self._events.put(event)

    async def _receive(self, inbox: Subscription) -> None:
        async for received in inbox:
            self._on_message(received)

    def _on_message(self, received: Received) -> None:
        if not received.payload:
            return
        try:
            message = decode(received.payload)
        except ProtocolError as exc:
            log.warning("unreadable message on %s: %s", received.topic, exc)
            self._event(Error(code=exc.code, text=exc.text, ref=received.topic))
            return
        if isinstance(message, ControllerClaim):
            if message.device_id == self.device_id:
                self.controller_id = message.controller_id
            return
        if isinstance(message, Pong):
            self._last_pong = asyncio.get_running_loop().time()
            self.controller_id = message.controller_id
            if not self.controller_alive:
                self.controller_alive = True
                self._event(HealthEvent(True, message.controller_id))
            return
        session_id = getattr(message, "session_id", None)
        for waiter in self._waiters.get(session_id, []) if session_id else []:
            if waiter.take(message):
                return
        self._event(message)

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_pong = loop.time()
        while True:
            self._ping_seq += 1
            with contextlib.suppress(DeviceSdkError):
                await self.bus.publish(
                    self.topics.device_up(self.device_id), Ping(seq=self._ping_seq).encode(), qos=0, timeout=1.0
                )
            await asyncio.sleep(self.heartbeat)
            if self.controller_alive and loop.time() - self._last_pong > self.pong_timeout:
                self.controller_alive = False
                log.warning("%s: controller %s stopped answering", self.device_id, self.controller_id)
                self._event(HealthEvent(False, self.controller_id))
