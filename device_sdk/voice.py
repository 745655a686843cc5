"""The voice pipeline of a device: audio in, a command heard, an offer read back, a spoken answer,
and a confirmation that only an accept phrase can give.

    source ─► endpointing ─► ASR (command grammar) ─► DeviceClient.ask ─► read-back (TTS)
           ─► ASR (reply grammar, garbage path) ─► ReplyDialog ─► signed mandate ─► order

The confirmation is a state machine of its own (`ReplyDialog`): only an utterance recognised as
exactly one of the accept phrases confirms; a decline phrase declines; anything else (speech that
took the garbage path, silence, a partial phrase) re-prompts once and then ends as
`not_confirmed`. "stop" or "cancel" while the read-back plays cancels it (barge-in).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import webrtcvad

from .arbitration import MAX_WINDOW
from .asr import AsrEngine, Recognition, Recognizer, Word
from .audio_sources import RATE, Pcm
from .device import DeviceClient, Offer
from .endpointing import EndpointConfig, Endpointer, Utterance
from .errors import OUTCOME_OF, ErrorCode, RemoteError, RequestTimeout, VoiceError
from .grammar import UNKNOWN, Grammar, Vocabulary, reply_grammar
from .messages import Decision, Modality, OrderResult, Outcome, new_id
from .replies import REPROMPT, ReplyDialog, interpret_reply
from .tts import espeak_available, play, synthesize

log = logging.getLogger(__name__)

ASK_AGAIN = "Sorry, I did not catch that. What would you like to buy?"
NOT_FOUND = "Sorry, I could not find that."
CANCELLED = "Cancelled."


class Listener:
    """Utterances from a source, one at a time, with timeouts counted in samples, not seconds of
    wall-clock time, so a file and a live microphone behave alike. A task reads the source from
    the first `next` on; waiting for an utterance can be cancelled without losing audio."""

    def __init__(self, source: AsyncIterable[Pcm], config: EndpointConfig | None = None) -> None:
        self._source = source
        self._endpointer = Endpointer(config or EndpointConfig())
        self._ready: list[Utterance] = []
        self._progress = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self.position = 0
        """Samples heard so far."""
        self.ended = False

    async def _read(self) -> None:
        try:
            async for block in self._source:
                self.position = block.end
                self._ready.extend(self._endpointer.feed(block))
                self._progress.set()
            last = self._endpointer.finish()
            if last is not None:
                self._ready.append(last)
        finally:
            self.ended = True
            self._progress.set()

    def drain(self) -> None:
        """Forget utterances already closed (heard while the device was talking)."""
        self._ready.clear()

    def stream_next(self, sink: Callable[[bytes], None]) -> bool:
        """Hand the audio of the next utterance to `sink` as it is heard; False (and nothing
        handed) when an utterance has already begun."""
        if self._endpointer.in_speech or self._ready:
            return False
        self._endpointer.on_speech = sink
        return True

    def stop_streaming(self) -> None:
        self._endpointer.on_speech = None

    async def next(self, timeout_s: float | None = None) -> Utterance | None:
        """The next utterance, or None when `timeout_s` of audio passed with no speech (or the
        source ended)."""
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(), name="voice-listener")
        deadline = None if timeout_s is None else self.position + round(timeout_s * RATE)
        while not self._ready:
            if self._reader.done() and self._reader.exception() is not None:
                raise self._reader.exception()  # type: ignore[misc]
            if self.ended:
                return None
            if deadline is not None and self.position >= deadline and not self._endpointer.in_speech:
                return None
            self._progress.clear()
            await self._progress.wait()
        return self._ready.pop(0)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


@dataclass
class LiveDecode:
    """A recogniser fed while the user speaks (on the listener's task), so that only the final
    pass is left when the utterance ends."""

    recognizer: Recognizer
    chunks: list[bytes] = field(default_factory=list)
    seconds: float = 0.0

    def accept(self, pcm: bytes) -> None:
        started = time.perf_counter()
        self.chunks.append(pcm)
        self.recognizer.accept(pcm)
        self.seconds += time.perf_counter() - started

    def audio(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class WakeWord:
    """Keyword spotting on each utterance; after a detection, detections for `lockout_s` of audio
    are ignored (one wake phrase heard twice, or echoed, opens one session)."""

    engine: AsrEngine
    phrase: str = "hey shop"
    threshold: float = 1e-40
    lockout_s: float = 2.0
    detections: list[int] = field(default_factory=list)
    """Sample offsets where the phrase was heard and taken."""
    confidence: float = 1.0
    """The engine's confidence in the last detection (1.0 where it gives none)."""
    _locked_until: int = -1

    def heard(self, utterance: Utterance) -> bool:
        spotter = self.engine.spotter(self.phrase, self.threshold)
        spotter.accept(utterance.pcm)
        result = spotter.result()
        if self.phrase not in result.text:
            return False
        if utterance.start < self._locked_until:
            return False
        self._locked_until = utterance.end + round(self.lockout_s * RATE)
        self.detections.append(utterance.start)
        self.confidence = 1.0 if result.confidence is None else result.confidence
        return True

    async def wait(self, listener: Listener) -> Utterance | None:
        """The next utterance that holds the wake phrase (None when the source ends)."""
        while (utterance := await listener.next()) is not None:
            if await asyncio.to_thread(self.heard, utterance):
                return utterance
        return None


def loudness_db(pcm: bytes) -> float:
    """RMS level of 16-bit PCM in dBFS (0 is full scale; silence is -120)."""
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples * samples))) / 32768.0
    return max(-120.0, 20.0 * float(np.log10(rms)) if rms > 0 else -120.0)


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
    to skip), handed to `output` (default: the loudspeaker), and shown with `show`."""

    output: Speak = loudspeaker
    show: Callable[[str], None] = field(default=lambda text: None)
    synthesize: bool = True
    voice: str = "en-us"
    speed: int = 160
    said: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.synthesize and not espeak_available():
            log.warning("espeak-ng is not installed: the device shows its prompts as text only")
            self.synthesize = False

    async def say(self, text: str) -> None:
        self.said.append(text)
        self.show(text)
        pcm = await asyncio.to_thread(synthesize, text, voice=self.voice, speed=self.speed) if self.synthesize else None
        await self.output(text, pcm)


@dataclass(frozen=True)
class VoiceConfig:
    endpoint: EndpointConfig = field(default_factory=lambda: EndpointConfig(end_s=0.5))
    command_attempts: int = 2
    """Times a command is listened for before the session gives up (`not_understood`)."""
    command_timeout_s: float = 8.0
    reply_timeout_s: float = 6.0
    """Audio with no reply that counts as no answer."""
    reprompts: int = 1
    open_vocabulary: bool = True
    """When the command grammar hears no command, send what the open language model heard."""
    modality: Modality = Modality.VOICE
    request_timeout_s: float = 30.0


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
    """Each reply as it counted (`reply_text`): what the dialog judged."""
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
    ) -> None:
        self.device = device
        self.engine = engine
        self.config = config or VoiceConfig()
        self.voice = voice or Voice()
        self.listener = Listener(source, self.config.endpoint)
        self.command_grammar: Grammar = vocabulary.command_grammar()
        self.reply_grammar: Grammar = reply_grammar()

    async def recognise(
        self, utterance: Utterance, grammar: Grammar | None, run: VoiceRun, live: LiveDecode | None = None
    ) -> Recognition:
        """The utterance's words: finished from `live` when it decoded this utterance as it was
        heard, else decoded now."""
        started = time.perf_counter()
        if live is not None and live.audio() == utterance.pcm:
            recognizer, rest = live.recognizer, b""
        else:
            if live is not None:
                live.recognizer.close()
            recognizer, rest = self.engine.recognizer(grammar), utterance.pcm

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
        one goes back to listening. A gateway that does not answer within `2 * MAX_WINDOW` seconds is
        taken as one that does not arbitrate, and the session opens (the gateway refuses requests in
        a session whose wake lost, so this cannot open two where the gateway arbitrates)."""
        while (heard := await wake.wait(self.listener)) is not None:
            session_id = new_id("ses")
            if arbitrate:
                try:
                    result = await self.device.wake(
                        wake.confidence, loudness_db(heard.pcm), session_id=session_id, timeout=2 * MAX_WINDOW
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
            run.outcome = OUTCOME_OF.get(exc.code, "not_understood" if exc.code in _NOT_UNDERSTOOD else "not_confirmed")
            await self.voice.say(_refusal_text(exc))
            return run
        run.rendered_at = time.monotonic()
        run.decision = await self._confirm(run, run.offer)
        if run.decision is Decision.CONFIRM:
            run.mandate = self.device.sign(run.offer, self.config.modality)
        heard = " / ".join(run.answers) or None
        run.result = await self.device.answer(
            run.offer,
            run.decision,
            modality=self.config.modality,
            heard=heard,
            mandate=run.mandate,
            timeout=self.config.request_timeout_s,
        )
        run.outcome = run.result.outcome.value
        if run.result.outcome is not Outcome.ORDERED and run.decision is Decision.CONFIRM:
            await self.voice.say(_refusal_text(run.result))
        return run

    async def _hear_command(self, run: VoiceRun) -> str | None:
        for attempt in range(self.config.command_attempts):
            if attempt:
                await self.voice.say(ASK_AGAIN)
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
            if self.config.open_vocabulary:
                open_text = await self.recognise(utterance, None, run)
                run.commands.append(open_text)
                await self._transcript(run, open_text)
                if open_text.text:
                    return open_text.text  # the agent may know it; if not, it says so
        return None

    async def _confirm(self, run: VoiceRun, offer: Offer) -> Decision:
        """The read-back, then the confirm/decline dialog; barge-in during the read-back."""
        if await self._say_listening(offer.readback, run):
            run.barge_in = True
            return Decision.DECLINE
        dialog = ReplyDialog(reprompts=self.config.reprompts)
        while True:
            utterance = await self.listener.next(self.config.reply_timeout_s)
            reply: str | None = None
            if utterance is not None:
                recognition = await self.recognise(utterance, self.reply_grammar, run)
                run.replies.append(recognition)
                await self._transcript(run, recognition)
                reply = reply_text(recognition, utterance.pcm)
                run.answers.append(reply)
            decision = dialog.feed(reply)
            if decision is not None:
                return decision
            if await self._say_listening(REPROMPT, run):
                run.barge_in = True
                return Decision.DECLINE

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
                if interpret_reply(answer) is Decision.DECLINE:
                    run.replies.append(recognition)
                    run.answers.append(answer)
                    speaking.cancel()
                    await asyncio.gather(speaking, return_exceptions=True)
                    await self.voice.say(CANCELLED)
                    return True
            await speaking
        finally:
            if not speaking.done():
                speaking.cancel()
        return False


_NOT_UNDERSTOOD = (ErrorCode.NOT_UNDERSTOOD, ErrorCode.ITEM_NOT_FOUND, ErrorCode.QUANTITY_OUT_OF_RANGE)


def reply_text(recognition: Recognition, pcm: bytes) -> str:
    """What a reply counts as: the words heard, with three checks that keep anything but a clear
    answer from reading as one.

    - Speech the words do not explain: voiced audio (WebRTC VAD, strictest mode) outside every
      recognised word, over `UNEXPLAINED_S`, adds `[unk]` ("yesterday was fun" heard as "yes"
      and silence).
    - No vowel: recognised words holding under `VOICED_S` of periodic audio add `[unk]` (white
      noise heard as "yes").
    - Garbage that is only room noise: an `[unk]` stretch much quieter than the words is dropped
      (noise around "confirm" is not speech); a loud one stays.
    """
    words = recognition.words
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)

    def rms(start: float, end: float) -> float:
        part = samples[int(start * RATE) : int(end * RATE)]
        return float(np.sqrt(np.mean(part**2))) if len(part) else 0.0

    spoken = [w for w in words if w.text != UNKNOWN]
    level = max((rms(w.start, w.end) for w in spoken), default=0.0)
    kept = [w.text for w in words if w.text != UNKNOWN or rms(w.start, w.end) > QUIET_GARBAGE * level]
    if not words:
        kept = recognition.text.split()
    if _unexplained_speech(words, pcm) > UNEXPLAINED_S:
        kept.append(UNKNOWN)
    if spoken and sum(voiced_seconds(samples[int(w.start * RATE) : int(w.end * RATE)]) for w in spoken) < VOICED_S:
        kept.append(UNKNOWN)  # no vowel in the words: noise, a hiss, a click heard as "yes"
    return " ".join(kept)


VOICED_S = 0.09


def voiced_seconds(samples: np.ndarray) -> float:
    """Seconds of 30 ms frames that are periodic at a speaking pitch (80 to 400 Hz): a frame's
    normalised autocorrelation peaks above 0.6 at such a lag. Vowels are; noise is not."""
    frame = _VAD_FRAME
    count = len(samples) // frame
    if count == 0:
        return 0.0
    frames = samples[: count * frame].reshape(count, frame)
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = (frames**2).sum(axis=1)
    voiced = 0
    for row, power in zip(frames, energy, strict=True):
        if power <= 1e3 * frame:  # quieter than about -30 dBFS: not speech worth judging
            continue
        best = max(
            float(np.dot(row[:-lag], row[lag:]))
            / float(np.sqrt(np.dot(row[:-lag], row[:-lag]) * np.dot(row[lag:], row[lag:])) + 1e-9)
            for lag in range(RATE // 400, RATE // 80)
        )
        voiced += best > 0.6
    return voiced * frame / RATE


UNEXPLAINED_S = 0.25
QUIET_GARBAGE = 0.1
_VAD_FRAME = RATE * 30 // 1000


def _unexplained_speech(words: Sequence[Word], pcm: bytes) -> float:
    """Seconds of voiced 30 ms frames whose middle lies outside every word."""
    vad = webrtcvad.Vad(3)
    spans = [(w.start, w.end) for w in words]
    unexplained = 0
    for i in range(0, len(pcm) // 2 - _VAD_FRAME + 1, _VAD_FRAME):
        middle = (i + _VAD_FRAME / 2) / RATE
        if any(start <= middle <= end for start, end in spans):
            continue
        if vad.is_speech(pcm[i * 2 : (i + _VAD_FRAME) * 2], RATE):
            unexplained += 1
    return unexplained * _VAD_FRAME / RATE


def _refusal_text(refusal: RemoteError | OrderResult) -> str:
    code = refusal.code if isinstance(refusal, RemoteError) else refusal.reason
    if code == ErrorCode.STEP_UP_REQUIRED:
        return "This order needs a stronger confirmation. Please confirm it on your phone."
    if code in OUTCOME_OF:
        return "Sorry, this order is not allowed."
    if isinstance(refusal, RemoteError) and refusal.code in (ErrorCode.NOT_UNDERSTOOD, ErrorCode.ITEM_NOT_FOUND):
        return NOT_FOUND
    return "The order was not placed."
