"""The spoken step-up: above the voice cap a "yes" is not enough, so the assistant asks for the PIN
set at provisioning, in the device's locale, hears its digits and has the platform check them.

    say_pin ─► utterance ─► ASR (digit grammar; Whisper beside it) ─► parse_pin ─► DeviceClient.step_up
       ▲                                                                                │
       └──── pin_unheard (not a PIN: nothing sent) / pin_wrong (step_up_failed) ◄──────┘

The platform counts the tries and locks the step-up after too many wrong ones; the dialog asks at
most `PinConfig.asks` times in a session (below the platform's limit), stops at once when it is
locked (`step_up_locked`) or has no PIN for the device, and gives up after two silences. "cancel"
(a decline phrase of the locale) declines the offer. The PIN is never said back, never published as
a transcript, never kept in the run and never logged: only how many tries there were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from device_sdk.device.offer import Offer
from device_sdk.protocol.errors import ErrorCode, RemoteError, RequestTimeout
from device_sdk.protocol.fields import Decision, Modality

from .digits import parse_pin, pin_grammar
from .replies import interpret_reply

if TYPE_CHECKING:
    from .assistant import VoiceAssistant, VoiceRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinConfig:
    asks: int = 3
    """Times the PIN is asked for in one session (the first time included)."""
    end_s: float = 0.8
    """Silence that ends a PIN: longer than a reply's, as digits are said with pauses between them."""
    timeout_s: float = 8.0
    """Audio with no speech that counts as no answer."""


@dataclass
class PinRun:
    """How the step-up went in one session: counts, never the PIN."""

    asked: int = 0
    sent: int = 0
    """PINs the platform checked."""
    unheard: int = 0
    """Answers that were not a PIN, or no answer (nothing sent for them)."""
    proved: bool = False
    cancelled: bool = False
    refusal: ErrorCode | None = None
    """The platform's last refusal (`step_up_failed`, `step_up_locked`, `modality_not_supported`...)."""


class PinDialog:
    """Asks `assistant`'s user for the PIN of an offer that needs a step-up."""

    def __init__(self, assistant: VoiceAssistant, config: PinConfig | None = None) -> None:
        self.assistant = assistant
        self.config = config or PinConfig()
        self.grammar = pin_grammar()

    @staticmethod
    def needed(offer: Offer) -> bool:
        """True when a spoken "yes" cannot confirm `offer` and a PIN can."""
        modalities = offer.request.consent.modalities
        return Modality.VOICE not in modalities and Modality.VOICE_PIN in modalities

    async def ask(self, run: VoiceRun, offer: Offer) -> tuple[str | None, Decision]:
        """The proof of a PIN the platform checked (None: no PIN was proved), and the decision:
        still `CONFIRM`, or `DECLINE` when the user said "cancel"."""
        listener = self.assistant.listener
        listener.end_after(self.config.end_s)
        run.pin = PinRun()
        try:
            return await self._dialog(run, run.pin, offer)
        finally:
            listener.end_after(None)

    async def _dialog(self, run: VoiceRun, pins: PinRun, offer: Offer) -> tuple[str | None, Decision]:
        said, locale = self.assistant.locale.voice, self.assistant.locale
        prompt, silences = said.say_pin, 0
        while pins.asked < self.config.asks:
            pins.asked += 1
            await self.assistant.voice.say(prompt)
            self.assistant.listener.drain()
            text = await self._hear(run)
            if text is None:
                silences += 1
                pins.unheard += 1
                if silences == 2:
                    break
                prompt = said.pin_unheard
                continue
            silences = 0
            if interpret_reply(text, locale.tag) is Decision.DECLINE:
                pins.cancelled = True
                await self.assistant.voice.say(said.cancelled)
                return None, Decision.DECLINE
            pin = parse_pin(text, locale.language)
            if pin is None:
                pins.unheard += 1
                prompt = said.pin_unheard
                continue
            pins.sent += 1
            try:
                proof = await self.assistant.device.step_up(offer, pin, timeout=self.assistant.config.request_timeout_s)
            except RemoteError as exc:
                pins.refusal = exc.code
                log.info("session %s: the PIN was refused (%s)", run.session_id, exc.code)
                if exc.code != ErrorCode.STEP_UP_FAILED:
                    if exc.code == ErrorCode.STEP_UP_LOCKED:
                        await self.assistant.voice.say(said.pin_locked)
                    break
                prompt = said.pin_wrong
                continue
            except RequestTimeout:
                log.warning("session %s: no answer to the step-up", run.session_id)
                break
            pins.proved = True
            return proof, Decision.CONFIRM
        return None, Decision.CONFIRM

    async def _hear(self, run: VoiceRun) -> str | None:
        """What the user said, as the digit grammar heard it, or Whisper beside it where the grammar
        heard no PIN; None for no speech. Nothing of it is published or kept."""
        assistant = self.assistant
        utterance = await assistant.listener.next(self.config.timeout_s)
        if utterance is None:
            return None
        heard = await assistant.recognise(utterance, self.grammar, run)
        language = assistant.locale.language
        if parse_pin(heard.text, language) is not None or assistant.fallback is None:
            return heard.text
        if interpret_reply(heard.text, assistant.locale.tag) is Decision.DECLINE:
            return heard.text
        return (await assistant.recognise(utterance, None, run, engine=assistant.fallback)).text
