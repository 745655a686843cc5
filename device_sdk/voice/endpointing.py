"""Endpointing: where an utterance starts and ends, decided on sample time, never wall-clock time,
so a file read as fast as possible and a live microphone give the same utterances.

Each 30 ms frame is classified voiced or not by WebRTC's VAD (`webrtcvad`). Speech starts once
`start_s` of voiced frames fall within a window of `start_s / 0.75`; it ends after `end_s` of
unvoiced frames, or at `max_s`. An utterance keeps `pre_roll_s` of audio before its start, so the
first syllable is not cut. Defaults: speech after 0.3 s, the end after 0.6 s of silence (Rhasspy,
OVOS), at most 10 s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field

import webrtcvad

from .sources import RATE, Pcm


@dataclass(frozen=True)
class EndpointConfig:
    start_s: float = 0.3
    end_s: float = 0.6
    max_s: float = 10.0
    pre_roll_s: float = 0.3
    aggressiveness: int = 2
    """WebRTC VAD mode, 0 (lenient) to 3 (strict)."""
    frame_ms: int = 30

    def __post_init__(self) -> None:
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("WebRTC VAD frames are 10, 20 or 30 ms")
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("aggressiveness is 0 to 3")
        if not 0 < self.start_s < self.max_s or self.end_s <= 0 or self.pre_roll_s < 0:
            raise ValueError("start_s, end_s and max_s must be positive, start_s below max_s")


@dataclass(frozen=True)
class Utterance:
    """One stretch of speech: samples [start, end) of the source, with its PCM (pre-roll included)."""

    start: int
    end: int
    pcm: bytes
    ended_by: str
    """`silence`, `max_length` or `end_of_stream`."""

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / RATE


@dataclass
class Endpointer:
    """Feed PCM in order (`feed`); collect the utterances it closes; `finish` at the end."""

    config: EndpointConfig = field(default_factory=EndpointConfig)

    def __post_init__(self) -> None:
        c = self.config
        self._vad = webrtcvad.Vad(c.aggressiveness)
        self._frame = RATE * c.frame_ms // 1000
        self._start_frames, self._end_frames = self._frames(c.start_s), self._frames(c.end_s)
        window = max(self._start_frames, round(self._start_frames / 0.75))
        self._window: deque[bool] = deque(maxlen=window)
        self._history: deque[bytes] = deque(maxlen=self._frames(c.pre_roll_s) + window)
        self._max_samples = round(c.max_s * RATE)
        self._pending = b""
        self._position = 0  # samples of the source consumed into frames
        self._speech: list[bytes] | None = None
        self.on_speech: Callable[[bytes], None] | None = None
        """Called with the audio of the utterance in progress as it comes (pre-roll first), so a
        recogniser can decode while the user speaks; cleared when that utterance closes."""
        self._speech_start = 0
        self._silent = 0

    def _frames(self, seconds: float) -> int:
        return max(1, round(seconds * 1000 / self.config.frame_ms))

    def end_after(self, seconds: float | None) -> None:
        """Close the next utterances after `seconds` of silence (None: the configured `end_s`): a
        short answer is over sooner than a command, and every tenth of a second is latency."""
        if seconds is not None and seconds <= 0:
            raise ValueError("end_after takes a positive number of seconds")
        self._end_frames = self._frames(self.config.end_s if seconds is None else seconds)

    @property
    def in_speech(self) -> bool:
        return self._speech is not None

    def feed(self, block: Pcm) -> list[Utterance]:
        """Take the next block (a gap in offsets counts as silence); return the utterances it ended."""
        done: list[Utterance] = []
        expected = self._position + len(self._pending) // 2
        if block.offset > expected:  # lost audio: silence, so time stays right
            self._pending += b"\x00\x00" * (block.offset - expected)
        self._pending += block.pcm
        size = self._frame * 2
        while len(self._pending) >= size:
            frame, self._pending = self._pending[:size], self._pending[size:]
            utterance = self._frame_in(frame)
            if utterance is not None:
                done.append(utterance)
        return done

    def finish(self) -> Utterance | None:
        """The source ended: close the utterance in progress, if any."""
        if self._speech is None:
            return None
        return self._close("end_of_stream")

    def _frame_in(self, frame: bytes) -> Utterance | None:
        voiced = bool(self._vad.is_speech(frame, RATE))
        self._position += self._frame
        if self._speech is None:
            self._window.append(voiced)
            self._history.append(frame)
            if sum(self._window) >= self._start_frames:
                first_voiced = len(self._window) - next(i for i, v in enumerate(self._window) if v)
                keep = min(len(self._history), first_voiced + round(self.config.pre_roll_s * RATE / self._frame))
                self._speech = list(self._history)[-keep:]
                if self.on_speech is not None:
                    self.on_speech(b"".join(self._speech))
                self._speech_start = self._position - keep * self._frame
                self._silent = 0
                self._window.clear()
            return None
        self._speech.append(frame)
        if self.on_speech is not None:
            self.on_speech(frame)
        self._silent = 0 if voiced else self._silent + 1
        if self._silent >= self._end_frames:
            return self._close("silence")
        if self._position - self._speech_start >= self._max_samples:
            return self._close("max_length")
        return None

    def _close(self, reason: str) -> Utterance:
        assert self._speech is not None
        self.on_speech = None
        pcm = b"".join(self._speech)
        utterance = Utterance(self._speech_start, self._speech_start + len(pcm) // 2, pcm, reason)
        self._speech = None
        self._history.clear()
        return utterance


async def utterances(source: AsyncIterable[Pcm], config: EndpointConfig | None = None) -> AsyncIterator[Utterance]:
    """Every utterance in `source`, as soon as its end is heard."""
    endpointer = Endpointer(config or EndpointConfig())
    async for block in source:
        for utterance in endpointer.feed(block):
            yield utterance
    last = endpointer.finish()
    if last is not None:
        yield last
