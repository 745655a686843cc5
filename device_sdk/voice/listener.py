"""Listening: utterances cut from a source by the endpointer, a decode that runs while speech
comes in, and the wake word."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field

import numpy as np

from .asr import AsrEngine, Recognizer
from .endpointing import EndpointConfig, Endpointer, Utterance
from .sources import RATE, Pcm


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

    def end_after(self, seconds: float | None) -> None:
        """The silence that ends an utterance from now on (None: the configured one)."""
        self._endpointer.end_after(seconds)

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
