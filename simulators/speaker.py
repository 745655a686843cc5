"""A simulated smart speaker.

`run_voice` hears through a real audio path: the user's command and replies are synthesised with
espeak-ng and played into a simulated room that the SDK's voice pipeline listens to (endpointing,
ASR, read-back, spoken answer, signed mandate). `run` is the text-driven variant for machines
without espeak-ng: the same dialog (one re-prompt after an unclear reply) on typed words.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from device_sdk.consent.mandate import mandate_id
from device_sdk.device.client import DeviceClient
from device_sdk.device.edge_policy import EdgePolicyRefused
from device_sdk.device.offer import Offer
from device_sdk.locale import locale_for
from device_sdk.protocol.errors import RemoteError
from device_sdk.protocol.fields import Decision, Modality
from device_sdk.protocol.messages import OrderResult
from device_sdk.voice.assistant import VoiceConfig
from device_sdk.voice.engines import Hearing
from device_sdk.voice.grammar import Vocabulary
from device_sdk.voice.replies import ReplyDialog

from .user_voices import speak, user_voice
from .voice_user import converse


@dataclass
class SpeakerRun:
    """What happened in one spoken exchange."""

    said: str
    heard_command: str | None = None
    """What the speaker's recogniser heard (None when driven by text)."""
    offer: Offer | None = None
    presented: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)
    decision: Decision | None = None
    mandate: str | None = None
    result: OrderResult | None = None
    error: RemoteError | None = None
    refused: EdgePolicyRefused | None = None
    """The device's own limits refused the offer (its reason was said; nothing presented or signed)."""

    @property
    def mandate_id(self) -> str | None:
        return mandate_id(self.mandate) if self.mandate else None


PIN_PROMPT = {
    "en-US": "That is over the voice limit. Say your PIN to confirm.",
    "zh-CN": "金额超过语音确认的上限，请说出您的PIN码确认。",
}
"""What the speaker says when an offer takes no spoken "yes" alone and its user has a PIN."""


class SimulatedSpeaker:
    """Runs one request-to-outcome exchange on a `DeviceClient`; `present` is its loudspeaker. Over the
    voice cap its user, asked for it, says `pin` (the one provisioned), which the platform checks."""

    def __init__(
        self, device: DeviceClient, present: Callable[[str], None] | None = None, *, pin: str | None = None
    ) -> None:
        self.device = device
        self.present = present or (lambda text: None)
        self.pin = pin

    async def run(
        self, say: str, replies: Iterable[str], *, timeout: float = 30.0, session_id: str | None = None
    ) -> SpeakerRun:
        """Ask `say` (in `session_id`, the one a wake word opened, if given), read the offer back, and
        answer with `replies` (one re-prompt after an unclear one)."""
        run = SpeakerRun(said=say)
        try:
            run.offer = await self.device.ask(say, session_id=session_id, timeout=timeout)
        except RemoteError as exc:
            run.error = exc
            return run
        except EdgePolicyRefused as refused:
            run.refused = refused
            self._say(run, refused.says)
            return run
        self._say(run, run.offer.readback)
        dialog, pending = ReplyDialog(locale=self.device.locale), iter(replies)
        while (decision := dialog.feed(next(pending, None))) is None:
            self._say(run, locale_for(self.device.locale).readback.reprompt)
        run.heard, run.decision = dialog.heard, decision
        modality, proof = Modality.TEXT, None
        if decision is Decision.CONFIRM and Modality.TEXT not in run.offer.request.consent.modalities and self.pin:
            self._say(run, PIN_PROMPT.get(self.device.locale, PIN_PROMPT["en-US"]))
            run.heard.append("(PIN)")  # what the user said, never the PIN itself
            try:
                proof = await self.device.step_up(run.offer, self.pin, timeout=timeout)
                modality = Modality.VOICE_PIN
            except RemoteError as exc:  # a wrong PIN or a lockout: the text confirmation is refused
                run.error = exc
        if decision is Decision.CONFIRM:
            run.mandate = self.device.sign(run.offer, modality, step_up=proof)
        run.result = await self.device.answer(
            run.offer,
            decision,
            modality=modality,
            heard=" / ".join(dialog.heard) or None,
            mandate=run.mandate,
            timeout=timeout,
        )
        return run

    async def run_voice(
        self,
        say: str,
        replies: Iterable[str],
        *,
        hearing: Hearing,
        vocabulary: Vocabulary,
        realtime: bool = False,
        timeout: float = 30.0,
    ) -> SpeakerRun:
        """The user speaks `say`, then each reply after the speaker stops talking, in the voice of
        a user of the device's locale (`user_voices`); the speaker hears them through its voice
        pipeline."""
        voice = user_voice(self.device.locale)
        command = await asyncio.to_thread(speak, say, voice)
        answers = [await asyncio.to_thread(speak, reply, voice) for reply in replies]
        voice_run, user = await converse(
            self.device,
            hearing,
            vocabulary,
            command,
            answers,
            realtime=realtime,
            present=self.present,
            config=VoiceConfig(request_timeout_s=timeout),
        )
        return SpeakerRun(
            said=say,
            heard_command=voice_run.command,
            offer=voice_run.offer,
            presented=user.heard,
            heard=voice_run.answers,
            decision=voice_run.decision,
            mandate=voice_run.mandate,
            result=voice_run.result,
            error=voice_run.error,
        )

    def _say(self, run: SpeakerRun, text: str) -> None:
        run.presented.append(text)
        self.present(text)
