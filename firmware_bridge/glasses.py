"""The glasses driver: a pair of glasses on a BLE link, made a device on the bus.

    async with GlassesLink(found.device) as link, DeviceClient(url, "glasses-1", key=key) as device:
        run = await GlassesDriver(link, device).run("buy two of these")

One run: a photo (its metadata stripped before it leaves the gateway) and what the wearer said
(typed, or heard through the glasses' microphone and the voice pipeline's recogniser) go to the
agent; the SDK's card for the proposal goes on the lens, and the glasses confirm that they show
exactly it (its SHA-256); a tap or a nod on that card confirms and signs a `lens_tap` mandate over
the card's digest, a swipe or a double tap declines, and nothing within the timeout is no answer.
A gesture counts only if the glasses report it on that very card, after they showed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

from device_sdk.consent.lens import LensCard
from device_sdk.device.client import DeviceClient
from device_sdk.device.edge_policy import EdgePolicyRefused
from device_sdk.device.offer import Offer
from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.protocol.errors import ErrorCode, ProtocolError, RemoteError
from device_sdk.protocol.fields import Capability, Decision, Modality
from device_sdk.protocol.messages import OrderResult
from device_sdk.voice.asr import AsrEngine
from device_sdk.voice.endpointing import EndpointConfig
from device_sdk.voice.grammar import UNKNOWN, Vocabulary
from device_sdk.voice.listener import Listener

from . import gatt
from .link import GlassesLink

CAPABILITIES = (Capability.MIC, Capability.CAMERA, Capability.DISPLAY, Capability.TOUCH)
"""What a pair of glasses announces in its device status."""
DEICTIC_NAMES = ("these", "of these", "this", "this one", "those", "of those", "that", "that one")
"""What a wearer calls the thing they look at; the agent resolves it from the photo."""


@dataclass
class GlassesRun:
    """What happened in one exchange on the glasses."""

    said: str | None = None
    heard: str | None = None
    """What the recogniser heard from the glasses' microphone (None when typed)."""
    image_ref: str | None = None
    offer: Offer | None = None
    card: LensCard | None = None
    gesture: gatt.Gesture | None = None
    decision: Decision | None = None
    mandate: str | None = None
    result: OrderResult | None = None
    error: RemoteError | None = None
    refused: EdgePolicyRefused | None = None
    """The device's own limits refused the offer: its reason was shown on the lens, no card to confirm."""


def default_ask(locale: str = DEFAULT_LOCALE) -> str:
    """What a session asks for when the driver has no recogniser, in the device's `locale`: one of
    what the photo shows ("buy this", "帮我买这个"; the locale file's `lens.ask`)."""
    return locale_for(locale).lens.ask


def glasses_vocabulary(vocabulary: Vocabulary) -> Vocabulary:
    """A command vocabulary that also takes "buy two of these" for the product in view."""
    return dataclasses.replace(vocabulary, products=vocabulary.products + tuple((n, None) for n in DEICTIC_NAMES))


class GlassesDriver:
    def __init__(self, link: GlassesLink, device: DeviceClient, *, decision_timeout: float = 60.0) -> None:
        self.link, self.device = link, device
        self.decision_timeout = decision_timeout

    async def photo(self) -> str:
        """Take a photo and publish it, stripped of its metadata; returns its `image_ref`."""
        return await self.device.send_image(await self.link.capture())

    async def hear(self, engine: AsrEngine, vocabulary: Vocabulary, *, timeout_s: float = 10.0) -> str | None:
        """Open the glasses' microphone and recognise one command (None: nothing understood)."""
        grammar = glasses_vocabulary(vocabulary).command_grammar()
        listener = Listener(self.link.audio(), EndpointConfig())
        await self.link.command(gatt.Mic(on=True))
        try:
            utterance = await listener.next(timeout_s)
        finally:
            with contextlib.suppress(Exception):
                await self.link.command(gatt.Mic(on=False))
            await listener.aclose()
        if utterance is None:
            return None
        recognizer = engine.recognizer(grammar)

        def decode() -> str:
            recognizer.accept(utterance.pcm)
            return recognizer.result().text

        text = await asyncio.to_thread(decode)
        return text if text and UNKNOWN not in text.split() else None

    async def present(self, offer: Offer) -> LensCard:
        """Show the SDK's card for `offer` on the lens; the glasses must report its exact digest."""
        card = LensCard.for_proposal(offer.request.proposal)
        card.render()  # refuses a card that does not fit the lens, before anything is shown
        shown = await self.link.show(card.payload)
        if shown != card.digest:
            raise ProtocolError("the glasses show another card than the one sent", ErrorCode.DISPLAY_MISMATCH)
        return card

    async def gesture(self, card: LensCard, timeout: float | None = None) -> gatt.Gesture | None:
        """The first confirming or cancelling gesture made on `card` after it was shown (None: none
        within the timeout). Gestures on another card, or on a blank lens, do not count."""
        shown = False
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.decision_timeout):
                async for event in self.link.events():
                    if isinstance(event, gatt.Shown):
                        shown = shown or event.digest == card.digest
                    elif isinstance(event, gatt.Input) and shown and event.digest == card.digest:
                        return event.gesture
        except TimeoutError:
            pass
        return None

    async def sessions(
        self, *, engine: AsrEngine | None = None, vocabulary: Vocabulary | None = None, ask: str | None = None
    ) -> AsyncIterator[GlassesRun]:
        """A session each time the wearer taps or nods on a blank lens, until the link closes: a
        photo, the words (heard through the microphone with `engine`, else `ask`; default: the
        device locale's `default_ask`), the card, the gesture, the outcome."""
        ask = ask or default_ask(self.device.locale)
        async for event in self.link.events():
            if isinstance(event, gatt.Input) and event.digest is None and event.gesture in gatt.CONFIRM_GESTURES:
                yield await self.run(None if engine is not None else ask, engine=engine, vocabulary=vocabulary)

    async def run(
        self,
        text: str | None = None,
        *,
        look: bool = True,
        engine: AsrEngine | None = None,
        vocabulary: Vocabulary | None = None,
        timeout: float = 30.0,
    ) -> GlassesRun:
        """Photo (if `look`), the words (`text`, else heard with `engine` and `vocabulary`), the
        proposal on the lens, the wearer's gesture, and the order's outcome."""
        run = GlassesRun(said=text)
        if look:
            run.image_ref = await self.photo()
        if text is None:
            if engine is None or vocabulary is None:
                raise ValueError("without text, the driver needs an ASR engine and a vocabulary to hear it")
            run.heard = text = await self.hear(engine, vocabulary)
            if text is None:
                return run
        try:
            run.offer = await self.device.ask(text, image_ref=run.image_ref, timeout=timeout)
        except RemoteError as exc:
            run.error = exc
            return run
        except EdgePolicyRefused as refused:
            run.refused = refused
            await self.link.show(LensCard(refused.says).payload)
            return run
        run.card = card = await self.present(run.offer)
        run.gesture = await self.gesture(card)
        if run.gesture is None:
            run.decision = Decision.NO_ANSWER
        else:
            run.decision = Decision.CONFIRM if run.gesture in gatt.CONFIRM_GESTURES else Decision.DECLINE
        if run.decision is Decision.CONFIRM:
            run.mandate = self.device.sign(run.offer, Modality.LENS_TAP, presented=card.text)
        run.result = await self.device.answer(
            run.offer,
            run.decision,
            modality=Modality.LENS_TAP,
            presented=card.text,
            heard=run.gesture.value if run.gesture else None,
            mandate=run.mandate,
            timeout=timeout,
        )
        with contextlib.suppress(Exception):
            await self.link.command(gatt.Clear())
        return run
