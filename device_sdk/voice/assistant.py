"""The voice pipeline of a device: audio in, a command heard, an offer read back, a spoken answer,
and a confirmation that only an accept phrase can give.

    source ─► endpointing ─► ASR (command grammar) ─► DeviceClient.ask ─► read-back (TTS)
           ─► ASR (reply grammar, garbage path) + Whisper + forced choice ─► ReplyJudge
           ─► ReplyDialog ─► (over the voice cap) PinDialog: the PIN, checked by the platform
           ─► signed mandate ─► order

Each reply is decided by a `ReplyJudge` from its hearings (`reply_judge.py`: only a clear accept
that the hearings agree on confirms); the dialog (`ReplyDialog`) re-prompts once after an unclear
reply or silence and then ends as `not_confirmed`. "stop" or "cancel" while the read-back plays
cancels it (barge-in). `VoiceAssistant.with_hearing(device, hearing_named(), ...)` is the hybrid.

The device's locale (`DeviceClient(locale=...)`) chooses what the assistant says and hears: its
prompts and espeak-ng voice come from the locale's data file, and `hearing_named(locale=...)` the
engines (Whisper alone for zh-CN).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from device_sdk.device.client import DeviceClient
from device_sdk.device.edge_policy import EdgePolicyRefused
from device_sdk.device.offer import Offer
from device_sdk.device.suggestions import SuggestionGate
from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.protocol.errors import OUTCOME_OF, ErrorCode, RemoteError, RequestTimeout, VoiceError
from device_sdk.protocol.fields import Decision, Modality, Outcome, new_id, now
from device_sdk.protocol.messages import MAX_WAKE_WINDOW, OrderResult
from device_sdk.protocol.suggestions import SuggestionOffer

from .asr import AsrEngine, Recognition
from .endpointing import EndpointConfig, Utterance
from .engines import Hearing
from .grammar import UNKNOWN, Grammar, Vocabulary, reply_grammar
from .listener import Listener, LiveDecode, WakeWord, loudness_db
from .pin import PinConfig, PinDialog, PinRun
from .replies import ReplyDialog, interpret_reply
from .reply_audio import reply_text
from .reply_judge import Judgement, ReplyJudge
from .sources import RATE, Pcm
from .tts import espeak_available, play, synthesize
from .whisper import WhisperEngine

log = logging.getLogger(__name__)
_NOT_UNDERSTOOD = (ErrorCode.NOT_UNDERSTOOD, ErrorCode.ITEM_NOT_FOUND, ErrorCode.QUANTITY_OUT_OF_RANGE)


Speak = Callable[[str, bytes | None], Awaitable[None]]


async def loudspeaker(text: str, pcm: bytes | None) -> None:
    """Play synthesised speech on the default output (the text was shown already)."""
    if pcm is not None:
        try:
            await asyncio.to_thread(play, pcm)
        except VoiceError as exc:
            log.warning("not played: %s", exc)


@dataclass
class Voice:
    """What the device says: synthesised with espeak-ng when it is installed (`synthesize=False`
    to skip), handed to `output` (default: the loudspeaker), and shown with `show`. `voice` is the
    espeak-ng voice (None: the one of the assistant's locale)."""

    output: Speak = loudspeaker
    show: Callable[[str], None] = field(default=lambda text: None)
    synthesize: bool = True
    voice: str | None = None
    speed: int = 160
    said: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.synthesize and not espeak_available():
            log.warning("espeak-ng is not installed: the device shows its prompts as text only")
            self.synthesize = False

    async def say(self, text: str) -> None:
        self.said.append(text)
        self.show(text)
        voice = self.voice or locale_for(DEFAULT_LOCALE).voice.espeak
        pcm = await asyncio.to_thread(synthesize, text, voice=voice, speed=self.speed) if self.synthesize else None
        await self.output(text, pcm)


class Button(Protocol):
    """A device's own button: the other way to confirm when the voice cannot hear the answer."""

    async def pressed(self, timeout: float) -> bool:
        """True when the user pressed it within `timeout` seconds (presses before the call do not count)."""
        ...


@dataclass(frozen=True)
class VoiceConfig:
    endpoint: EndpointConfig = field(default_factory=lambda: EndpointConfig(end_s=0.5))
    command_attempts: int = 2
    """Times a command is listened for before the session gives up (`not_understood`)."""
    command_timeout_s: float = 8.0
    reply_end_s: float | None = 0.4
    """Silence that ends a reply (None: the endpoint's own): answers are short, so they are cut
    sooner than commands, and the decision comes sooner."""
    reply_timeout_s: float = 6.0
    """Audio with no reply that counts as no answer."""
    button_timeout_s: float = 10.0
    """How long the device waits for a press once it has offered its button (`Button`)."""
    reprompts: int = 1
    open_vocabulary: bool = True
    """When the command grammar hears no command, send what an open vocabulary heard: the
    assistant's `fallback` engine (Whisper, in the hybrid), else the engine's language model."""
    modality: Modality = Modality.VOICE
    request_timeout_s: float = 30.0
    hand_over: bool = True
    """When the voice heard no answer and no button confirmed, hand the offer to the phone paired
    with the device at provisioning (if there is one): its sheet confirms, its key signs."""
    pin: PinConfig | None = field(default_factory=PinConfig)
    """Above the voice cap, ask for the PIN after the "yes" (`pin.py`); None: never ask."""


@dataclass
class VoiceRun:
    """What happened in one voice session, step by step."""

    commands: list[Recognition] = field(default_factory=list)
    command: str | None = None
    offer: Offer | None = None
    rendered_at: float | None = None
    """`time.monotonic()` when the offer was ready to present (read-back about to start)."""
    replies: list[Recognition] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    """Each reply as the reply grammar heard it (`reply_text`); Whisper's words are in `judgements`."""
    judgements: list[Judgement] = field(default_factory=list)
    """How each reply was decided: the hearings and the row of the decision table."""
    finished_at: float | None = None
    """`time.monotonic()` when the order result (or the refusal) reached the device."""
    barge_in: bool = False
    decision: Decision | None = None
    mandate: str | None = None
    result: OrderResult | None = None
    error: RemoteError | None = None
    outcome: str | None = None
    """`ordered`, `declined`, `not_confirmed`, `step_up_required`, `blocked`, or `not_understood`
    (no command was heard)."""
    asr_seconds: float = 0.0
    audio_seconds: float = 0.0
    session_id: str = field(default_factory=lambda: new_id("ses"))
    fallback_offered: bool = False
    """The voice could not hear an answer and the device offered its button, or its paired phone."""
    handed_to: str | None = None
    """The paired phone the offer was handed to, when it was."""
    modality: Modality | None = None
    """How the user confirmed (the mandate names it): voice, or the button or phone sheet of the other path."""
    pin: PinRun | None = None
    """How the step-up went, when a PIN was asked for (counts only, never the PIN)."""


class VoiceAssistant:
    """One device's voice sessions: listen for a command on `source`, ask the agent through
    `device`, read the offer back with `voice`, and take the spoken answer."""

    def __init__(
        self,
        device: DeviceClient,
        engine: AsrEngine,
        vocabulary: Vocabulary,
        source: AsyncIterable[Pcm],
        *,
        voice: Voice | None = None,
        config: VoiceConfig | None = None,
        judge: ReplyJudge | None = None,
        fallback: AsrEngine | None = None,
        button: Button | None = None,
    ) -> None:
        self.device = device
        self.engine = engine
        self.fallback = fallback
        self.button = button
        """After two unheard replies the device offers this button instead of giving up (None: no button)."""
        """Hears a command the grammar did not, with no grammar (default: `engine`'s language model)."""
        self.judge = judge or Hearing.of(engine).judge
        """Decides each reply (default: the engine's hearing, and the forced choice on pocketsphinx)."""
        self.config = config or VoiceConfig()
        self.locale = locale_for(device.locale)
        """What the assistant says, and the replies it takes: the device's locale."""
        self.voice = voice or Voice()
        if self.voice.voice is None:
            self.voice.voice = self.locale.voice.espeak
        self.listener = Listener(source, self.config.endpoint)
        self.command_grammar: Grammar = vocabulary.command_grammar()
        self.reply_grammar: Grammar = reply_grammar()
        self.pin = PinDialog(self, self.config.pin) if self.config.pin is not None else None

    @classmethod
    def with_hearing(
        cls,
        device: DeviceClient,
        hearing: Hearing,
        vocabulary: Vocabulary,
        source: AsyncIterable[Pcm],
        *,
        voice: Voice | None = None,
        config: VoiceConfig | None = None,
        button: Button | None = None,
    ) -> VoiceAssistant:
        """An assistant that hears with `hearing` (`hearing_named()`: the hybrid, the default)."""
        return cls(
            device, hearing.engine, vocabulary, source, voice=voice, config=config, judge=hearing.judge,
            fallback=hearing.fallback, button=button,
        )  # fmt: skip

    async def recognise(
        self,
        utterance: Utterance,
        grammar: Grammar | None,
        run: VoiceRun,
        live: LiveDecode | None = None,
        *,
        engine: AsrEngine | None = None,
    ) -> Recognition:
        """The utterance's words: finished from `live` when it decoded this utterance as it was
        heard, else decoded now (by `engine`, default the assistant's)."""
        started = time.perf_counter()
        if live is not None and live.audio() == utterance.pcm:
            recognizer, rest = live.recognizer, b""
        else:
            if live is not None:
                live.recognizer.close()
            recognizer, rest = (engine or self.engine).recognizer(grammar), utterance.pcm

        def decode() -> Recognition:
            if rest:
                recognizer.accept(rest)
            return recognizer.result()

        recognition = await asyncio.to_thread(decode)
        run.asr_seconds += time.perf_counter() - started + (live.seconds if live is not None else 0.0)
        run.audio_seconds += len(utterance.pcm) / 2 / RATE
        return recognition

    async def __aenter__(self) -> VoiceAssistant:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening to the source."""
        await self.listener.aclose()

    async def sessions(self, wake: WakeWord, *, arbitrate: bool = True) -> AsyncIterator[VoiceRun]:
        """A session after each wake phrase, until the source ends. With a push-to-talk button
        instead, call `session` when it is pressed.

        With `arbitrate` each wake goes to the gateway first (`DeviceClient.wake`, with the wake
        phrase's confidence and loudness): when another device of the room heard it better, this
        one goes back to listening. A gateway that does not answer within `2 * MAX_WAKE_WINDOW` seconds is
        taken as one that does not arbitrate, and the session opens (the gateway refuses requests in
        a session whose wake lost, so this cannot open two where the gateway arbitrates)."""
        while (heard := await wake.wait(self.listener)) is not None:
            session_id = new_id("ses")
            if arbitrate:
                try:
                    result = await self.device.wake(
                        wake.confidence, loudness_db(heard.pcm), session_id=session_id, timeout=2 * MAX_WAKE_WINDOW
                    )
                except (RemoteError, RequestTimeout) as exc:
                    log.warning("no wake arbitration (%s): opening the session", exc)
                else:
                    if not result.granted:
                        log.info("%s heard the wake word better: listening again", result.winner)
                        continue
            yield await self.session(session_id=session_id)

    async def _transcript(self, run: VoiceRun, recognition: Recognition) -> None:
        """What was heard goes on the bus too, so each session's audio trail is on the timeline."""
        if recognition.text:
            await self.device.transcript(
                run.session_id, recognition.text, final=True, confidence=recognition.confidence
            )

    async def session(self, *, session_id: str | None = None) -> VoiceRun:
        """From the command (push-to-talk: the device is already listening) to the outcome."""
        run = VoiceRun() if session_id is None else VoiceRun(session_id=session_id)
        text = await self._hear_command(run)
        if text is None:
            run.outcome = "not_understood"
            return run
        run.command = text
        try:
            run.offer = await self.device.ask(text, session_id=run.session_id, timeout=self.config.request_timeout_s)
        except RemoteError as exc:
            run.error = exc
            run.outcome = refusal_outcome(exc)
            await self.voice.say(self._refusal_text(exc))
            return run
        except EdgePolicyRefused as refused:  # the device's own limits: its reason said, nothing read back
            run.outcome = Outcome.DECLINED.value
            await self.voice.say(refused.says)
            return run
        run.rendered_at = time.monotonic()
        run.decision = await self._confirm(run, run.offer)
        if run.decision is Decision.NO_ANSWER:
            run.decision = await self._press_to_confirm(run, run.offer)
        if run.decision is Decision.NO_ANSWER and self.config.hand_over:
            run.result = await self._hand_to_phone(run, run.offer)
            if run.result is not None:
                run.finished_at = time.monotonic()
                run.outcome = run.result.outcome.value
                return run
        modality, proof = run.modality or self.config.modality, None
        if run.decision is Decision.CONFIRM and modality is Modality.VOICE and self.pin and self.pin.needed(run.offer):
            proof, run.decision = await self.pin.ask(run, run.offer)
            modality = Modality.VOICE_PIN if proof is not None else modality
        if run.decision is Decision.CONFIRM:
            run.modality = modality
            run.mandate = self.device.sign(run.offer, modality, step_up=proof)
        heard = " / ".join(run.answers) or None
        run.result = await self.device.answer(
            run.offer,
            run.decision,
            modality=modality,
            heard=heard,
            mandate=run.mandate,
            timeout=self.config.request_timeout_s,
        )
        run.finished_at = time.monotonic()
        run.outcome = run.result.outcome.value
        if run.result.outcome is not Outcome.ORDERED and run.decision is Decision.CONFIRM:
            await self.voice.say(self._refusal_text(run.result))
        return run

    async def suggest(self, gate: SuggestionGate, offer: SuggestionOffer, ask: str, unit: str) -> tuple[VoiceRun, bool]:
        """Say a suggestion the device took and take its answer (`suggestion_session.py`)."""
        from .suggestion_session import speak_suggestion

        return await speak_suggestion(self, gate, offer, ask, unit)

    async def _hear_command(self, run: VoiceRun) -> str | None:
        for attempt in range(self.config.command_attempts):
            if attempt:
                await self.voice.say(self.locale.voice.ask_again)
                self.listener.drain()
            live = LiveDecode(self.engine.recognizer(self.command_grammar))
            streaming = self.listener.stream_next(live.accept)  # False: speech already under way
            if not streaming:
                live.recognizer.close()
            utterance = await self.listener.next(self.config.command_timeout_s)
            if utterance is None:
                if streaming:
                    self.listener.stop_streaming()
                    live.recognizer.close()
                continue
            recognition = await self.recognise(utterance, self.command_grammar, run, live if streaming else None)
            run.commands.append(recognition)
            await self._transcript(run, recognition)
            if recognition.text and UNKNOWN not in recognition.text.split():
                return recognition.text
            if self.config.open_vocabulary and self._hears_grammars():
                open_text = await self.recognise(utterance, None, run, engine=self.fallback)
                run.commands.append(open_text)
                await self._transcript(run, open_text)
                if open_text.text:
                    return open_text.text  # the agent may know it; if not, it says so
        return None

    async def _confirm(self, run: VoiceRun, offer: Offer) -> Decision:
        """The read-back, then the confirm/decline dialog; barge-in during the read-back. Replies
        end after `reply_end_s` of silence."""
        self.listener.end_after(self.config.reply_end_s)
        try:
            return await self._dialog(run, offer)
        finally:
            self.listener.end_after(None)

    async def _dialog(self, run: VoiceRun, offer: Offer) -> Decision:
        if await self._say_listening(offer.readback, run):
            run.barge_in = True
            return Decision.DECLINE
        dialog = ReplyDialog(reprompts=self.config.reprompts, locale=self.locale.tag)
        while True:
            utterance = await self.listener.next(self.config.reply_timeout_s)
            decision: Decision | None = None
            reply: str | None = None
            if utterance is not None:
                judgement = await self.judge.judge(utterance.pcm, self._first_hearing(utterance, run))
                run.judgements.append(judgement)
                run.asr_seconds += judgement.asr_seconds
                run.audio_seconds += judgement.audio_seconds
                reply = judgement.first
                run.answers.append(reply)
                decision = judgement.decision
            decision = dialog.decide(decision, reply)
            if decision is not None:
                return decision
            if await self._say_listening(self.locale.readback.reprompt, run):
                run.barge_in = True
                return Decision.DECLINE

    async def _press_to_confirm(self, run: VoiceRun, offer: Offer) -> Decision:
        """The other path: when the voice could not hear an answer, a device with a button offers it,
        if the checkout's terms allow a press; a press confirms what was read back, nothing cancels."""
        if self.button is None or Modality.BUTTON not in offer.request.consent.modalities:
            return Decision.NO_ANSWER
        run.fallback_offered = True
        await self.voice.say(self.locale.voice.press_to_confirm)
        if await self.button.pressed(self.config.button_timeout_s):
            run.modality = Modality.BUTTON
            return Decision.CONFIRM
        return Decision.NO_ANSWER

    async def _first_hearing(self, utterance: Utterance, run: VoiceRun) -> str:
        """The reply on the reply grammar, as it counts (`reply_text`), published as a transcript."""
        recognition = await self.recognise(utterance, self.reply_grammar, run)
        run.replies.append(recognition)
        await self._transcript(run, recognition)
        return reply_text(recognition, utterance.pcm)

    async def _say_listening(self, text: str, run: VoiceRun) -> bool:
        """Say `text` while listening; True when the user said a decline phrase over it."""
        speaking = asyncio.create_task(self.voice.say(text))
        try:
            while not speaking.done():
                listening = asyncio.create_task(self.listener.next())
                done, _ = await asyncio.wait({speaking, listening}, return_when=asyncio.FIRST_COMPLETED)
                if listening not in done:  # the speech ended first; what follows is the reply
                    listening.cancel()
                    await asyncio.gather(listening, return_exceptions=True)
                    break
                utterance = listening.result()
                if utterance is None:
                    continue
                recognition = await self.recognise(utterance, self.reply_grammar, run)
                answer = reply_text(recognition, utterance.pcm)
                if interpret_reply(answer, self.locale.tag) is Decision.DECLINE:
                    run.replies.append(recognition)
                    run.answers.append(answer)
                    speaking.cancel()
                    await asyncio.gather(speaking, return_exceptions=True)
                    await self.voice.say(self.locale.voice.cancelled)
                    return True
            await speaking
        finally:
            if not speaking.done():
                speaking.cancel()
        return False

    def _hears_grammars(self) -> bool:
        """True when commands are heard on a grammar, so that an open vocabulary can hear what it
        missed; Whisper alone hears freely the first time (a second decode of the same noise
        would only cost time)."""
        return self.fallback is not None or not isinstance(self.engine, WhisperEngine)

    def _refusal_text(self, refusal: RemoteError | OrderResult) -> str:
        said = self.locale.voice
        code = refusal.code if isinstance(refusal, RemoteError) else refusal.reason
        if code == ErrorCode.STEP_UP_REQUIRED:
            return said.step_up
        if code in OUTCOME_OF:
            return said.not_allowed
        if isinstance(refusal, RemoteError) and refusal.code in (ErrorCode.NOT_UNDERSTOOD, ErrorCode.ITEM_NOT_FOUND):
            return said.not_found
        return said.not_placed

    async def _hand_to_phone(self, run: VoiceRun, offer: Offer) -> OrderResult | None:
        """The other path on a device paired with a phone: hand the offer to the phone's sheet and
        wait for the session's result; None when there is no phone to hand it to, or no result came
        before the offer expired (the device then answers it unconfirmed)."""
        try:
            run.handed_to = await self.device.hand_over(offer, timeout=self.config.request_timeout_s)
        except (RemoteError, RequestTimeout) as exc:
            if not (isinstance(exc, RemoteError) and exc.code == ErrorCode.NOT_PAIRED):
                log.warning("session %s: could not hand the offer over: %s", run.session_id, exc)
            return None
        run.fallback_offered = True
        await self.voice.say(self.locale.voice.sent_to_phone)
        try:
            result = await self.device.result(offer, timeout=max(offer.request.expires_at - now(), 0.0) + 10.0)
        except (RemoteError, RequestTimeout) as exc:
            log.warning("session %s: no result from the phone: %s", run.session_id, exc)
            return None
        if result.outcome is Outcome.ORDERED:
            run.decision, run.modality = Decision.CONFIRM, Modality.PHONE_SHEET
        elif result.outcome is Outcome.DECLINED:
            run.decision = Decision.DECLINE
        return result


def refusal_outcome(refusal: RemoteError) -> str:
    """A session's outcome when the agent or the gateway refused its request: the policy's
    outcomes as they are, `not_understood` for a command the agent could not read."""
    return OUTCOME_OF.get(refusal.code, "not_understood" if refusal.code in _NOT_UNDERSTOOD else "not_confirmed")
