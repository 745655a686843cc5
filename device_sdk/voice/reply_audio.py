"""What a spoken reply's audio says beyond its words: the text the reply checks read, and the
speech the recogniser could not explain (a reason not to trust a confirm)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import webrtcvad

from .asr import Recognition, Word
from .grammar import UNKNOWN
from .sources import RATE


def reply_text(recognition: Recognition, pcm: bytes) -> str:
    """What a reply counts as: the words heard, with three checks that keep anything but a clear
    answer from reading as one.

    - Speech the words do not explain: voiced audio (WebRTC VAD, strictest mode) outside every
      recognised word, over `UNEXPLAINED_S`, adds `[unk]` ("yesterday was fun" heard as "yes"
      and silence). An engine that gives no word timings (Whisper) writes all it heard: no check.
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
    if words and _unexplained_speech(words, pcm) > UNEXPLAINED_S:
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
