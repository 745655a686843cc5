"""Simulated devices with the conformance test mode: complete protocol devices at the bus level (a
speaker, glasses, a phone), each a `DeviceClient` with a signing key of its own and a simulated user
whom a conformance run directs (`conformance.control`, honoured only when the test mode is allowed),
and deliberately broken ones, each with one flaw, for the check to catch (docs/conformance.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import mandate_for
from device_sdk.consent.readback import compose_readback, presentation
from device_sdk.device.client import DeviceClient
from device_sdk.device.offer import Offer
from device_sdk.media.audio import AudioChunk
from device_sdk.protocol.conformance import ConformanceControl
from device_sdk.protocol.errors import ConfigError, DeviceSdkError, ErrorCode, ProtocolError
from device_sdk.protocol.fields import Capability, Decision, DeviceKind, Modality, new_id
from device_sdk.protocol.messages import (
    AgentRequest,
    AudioStart,
    AudioStop,
    ConfirmationRequest,
    ConfirmationResult,
)
from firmware_bridge.glasses import CAPABILITIES as GLASSES_CAPABILITIES

log = logging.getLogger(__name__)

KINDS: dict[DeviceKind, tuple[tuple[Capability, ...], Modality]] = {
    DeviceKind.SPEAKER: ((Capability.MIC, Capability.AUDIO_OUT, Capability.TEXT), Modality.VOICE),
    DeviceKind.GLASSES: (GLASSES_CAPABILITIES, Modality.LENS_TAP),
    DeviceKind.PHONE: ((Capability.DISPLAY, Capability.TOUCH, Capability.TEXT), Modality.PHONE_SHEET),
}
"""What each simulated kind announces, and how its user confirms."""
FLAWS = {
    "no-will": "never sets a last will",
    "stale-hash": "signs the hash of an earlier cart",
    "signs-unshown": "signs without showing the read-back (the digest of nothing)",
    "trusts-readback": "signs an offer whose read-back is not its proposal's",
    "signs-expired": "signs an offer past its expiry",
    "signs-decline": "puts a mandate on a decline",
    "bad-audio": "frames audio with offsets that skip",
}
"""The broken devices: each breaks one requirement, named in tests/test_conformance.py."""
CHUNK_SAMPLES = 1600
"""100 ms at 16 kHz."""


class _NoWillClient(DeviceClient):
    """A device that connects with no last will: an unclean drop leaves it `online: true`."""

    async def start(self) -> None:
        self._bus = MqttBus(self.url, f"dev-{self.device_id}")
        await self._bus.connect()
        inbox = await self._bus.subscribe(
            self.topics.device_down(self.device_id), self.topics.device_controller(self.device_id)
        )
        self._bus.add_connect_hook(self._announce)
        await self._announce()
        self._spawn(self._receive(inbox))
        if self.heartbeat > 0:
            self._spawn(self._heartbeat())


class TestModeDevice:
    """One simulated device and its user. `test_mode` allows conformance runs to direct it; `flaw`
    (one of `FLAWS`) breaks it on purpose.

        async with TestModeDevice(url, "speaker-1", DeviceKind.SPEAKER) as sim: ...
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        url: BrokerUrl | str,
        device_id: str,
        kind: DeviceKind = DeviceKind.SPEAKER,
        *,
        test_mode: bool = True,
        flaw: str | None = None,
        key: SigningKey | None = None,
        room: str | None = None,
        firmware: str | None = "sim-0.1",
        heartbeat: float = 2.0,
    ) -> None:
        if flaw is not None and flaw not in FLAWS:
            raise ConfigError(f"no such flaw {flaw!r}: one of {', '.join(FLAWS)}")
        caps, self.modality = KINDS[kind]
        self.kind, self.test_mode, self.flaw = kind, test_mode, flaw
        client = _NoWillClient if flaw == "no-will" else DeviceClient
        self.device = client(
            url,
            device_id,
            kind=kind,
            capabilities=caps,
            firmware=firmware,
            room=room,
            heartbeat=heartbeat,
            key=key or SigningKey.generate(),
        )
        self.sessions: list[str] = []
        """What each session of the simulated user came to: `ordered`, `declined`, `refused: ...`."""
        self._last_hash = "0" * 64
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def device_id(self) -> str:
        return self.device.device_id

    async def __aenter__(self) -> Self:
        await self.device.start()
        self._spawn(self._drive())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.device.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self) -> None:
        async for event in self.device.events():
            if isinstance(event, ConformanceControl):
                if self.test_mode:
                    self._spawn(self._act(event))
                else:
                    log.info("%s: a conformance control, and the test mode is off: ignored", self.device_id)

    async def _act(self, control: ConformanceControl) -> None:
        try:
            if control.action == "ask" and control.text:
                await self._session(control.text, control.answer or Decision.CONFIRM)
            elif control.action == "drop":
                self.device.bus.drop()
            elif control.action == "reconnect":
                await self.device.stop()
                await self.device.start()
            elif control.action == "audio":
                await self._audio()
        except DeviceSdkError as exc:
            self.sessions.append(f"refused: {exc.code.value}")
            log.info("%s: %s: %s", self.device_id, control.action, exc)

    # the user's session ------------------------------------------------------------------------

    async def _session(self, text: str, decision: Decision) -> None:
        offer = await (
            self._ask_unchecked(text)
            if self.flaw in ("trusts-readback", "signs-expired")
            else self.device.ask(text, timeout=15.0)
        )
        shown = presentation(offer.request.proposal, self.modality)
        if self.flaw == "signs-decline" and decision is Decision.DECLINE:
            await self._decline_signed(offer, shown)
            return
        mandate = None
        if decision is Decision.CONFIRM and self.flaw == "stale-hash":
            stale = offer.request.model_copy(update={"checkout_hash": self._last_hash})
            mandate = mandate_for(
                stale, self._key, device_id=self.device_id, modality=self.modality, display_digest=offer.digest(shown)
            )
        self._last_hash = offer.request.checkout_hash
        presented = "" if self.flaw == "signs-unshown" else shown
        result = await self.device.answer(
            offer,
            decision,
            modality=self.modality,
            heard=decision.value,
            presented=presented,
            mandate=mandate,
            timeout=15.0,
        )
        self.sessions.append(result.outcome.value)

    @property
    def _key(self) -> SigningKey:
        assert self.device.key is not None
        return self.device.key

    async def _ask_unchecked(self, text: str) -> Offer:
        """The flawed devices' ask: the offer as it came, read-back or expiry unchecked."""
        d = self.device
        request = AgentRequest(
            request_id=new_id("req"), device_id=d.device_id, session_id=new_id("ses"), text=text, locale=d.locale
        )
        reply: ConfirmationRequest = await d._exchange(
            request.session_id,
            request.encode(),
            lambda m: isinstance(m, ConfirmationRequest) and m.request_id == request.request_id,
            request.request_id,
            15.0,
        )
        if self.flaw == "signs-expired" and compose_readback(reply.proposal) != reply.readback:
            raise ProtocolError("the read-back does not match the proposal", ErrorCode.DISPLAY_MISMATCH)
        if self.flaw == "trusts-readback" and reply.expires_at <= time.time():
            raise ProtocolError("the offer has expired", ErrorCode.CHECKOUT_CLOSED)
        return Offer(reply)

    async def _decline_signed(self, offer: Offer, shown: str) -> None:
        r = offer.request
        answer = ConfirmationResult(
            session_id=r.session_id,
            checkout_id=r.checkout_id,
            checkout_hash=r.checkout_hash,
            decision=Decision.DECLINE,
            modality=self.modality,
            display_digest=offer.digest(shown),
            mandate=self.device.sign(offer, self.modality, presented=shown),
            idempotency_key=offer.key_for(self.device_id),
        )
        await self.device.bus.publish(self.device.topics.device_up(self.device_id), answer.encode())
        self.sessions.append("declined with a mandate")

    async def _audio(self) -> None:
        """About a second of a quiet tone, in 100 ms chunks."""
        session_id = new_id("ses")
        if self.flaw != "bad-audio":
            await self.device.stream_audio(session_id, _tone(10))
            return
        d = self.device
        up, audio = d.topics.device_up(d.device_id), d.topics.device_audio(d.device_id)
        await d.bus.publish(up, AudioStart(session_id=session_id, stream=7).encode())
        for seq, pcm in enumerate(_tone(10)):
            await d.bus.publish(audio, AudioChunk(7, seq, seq * (CHUNK_SAMPLES + 160), pcm).encode(), qos=0)
        await d.bus.publish(up, AudioStop(session_id=session_id, stream=7, samples=10 * CHUNK_SAMPLES).encode())


def _tone(chunks: int) -> Iterator[bytes]:
    for n in range(chunks):
        yield bytes((n + i) % 7 for i in range(2 * CHUNK_SAMPLES))


@contextlib.asynccontextmanager
async def simulated_devices(
    url: BrokerUrl | str,
    kinds: tuple[DeviceKind, ...],
    *,
    prefix: str = "sim",
    test_mode: bool = True,
    room: str | None = None,
) -> Any:
    """`TestModeDevice`s `<prefix>-<kind>-<n>`, one per kind given, started together."""
    sims = [
        TestModeDevice(url, f"{prefix}-{k.value}-{n}", k, test_mode=test_mode, room=room)
        for n, k in enumerate(kinds, start=1)
    ]
    async with contextlib.AsyncExitStack() as stack:
        await asyncio.gather(*(stack.enter_async_context(s) for s in sims))
        yield sims
