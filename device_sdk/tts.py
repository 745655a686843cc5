"""Speech out: espeak-ng synthesises the read-back and the prompts; sounddevice plays them.

`synthesize` gives 16 kHz s16le mono PCM (the pipeline's format), so the same audio can be
played on a loudspeaker, written to a WAV, or fed straight into a recogniser in tests and in the
evaluation. Where espeak-ng is absent, `Voice.say` shows the text instead and says so once.
"""

from __future__ import annotations

import asyncio
import io
import logging
import shutil
import subprocess
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .audio_sources import RATE, to_mono_16k
from .errors import ErrorCode, VoiceError

log = logging.getLogger(__name__)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, *, voice: str = "en-us", speed: int = 160) -> bytes:
    """`text` spoken by espeak-ng (`-v voice -s speed`), as 16 kHz s16le mono PCM."""
    if not espeak_available():
        raise VoiceError("espeak-ng is not installed (apt-get install espeak-ng)", ErrorCode.TTS_UNAVAILABLE)
    if not 80 <= speed <= 450:
        raise VoiceError(f"speed {speed} is outside espeak-ng's 80 to 450 words per minute", ErrorCode.TTS_UNAVAILABLE)
    done = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", "--stdin"],
        input=text.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or not done.stdout:
        raise VoiceError(f"espeak-ng failed: {done.stderr.decode(errors='replace').strip()}", ErrorCode.TTS_UNAVAILABLE)
    try:
        with wave.open(io.BytesIO(done.stdout)) as wav:
            frames = wav.readframes(wav.getnframes())
            return to_mono_16k(frames, wav.getframerate(), wav.getsampwidth(), wav.getnchannels()).tobytes()
    except (wave.Error, EOFError) as exc:
        raise VoiceError(f"espeak-ng gave no WAV: {exc}", ErrorCode.TTS_UNAVAILABLE) from None


def trim_silence(pcm: bytes, threshold: int = 200) -> bytes:
    """Speech without the silence a synthesiser leaves around it (s16le mono in and out)."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if not len(loud):
        return b""
    return samples[loud[0] : loud[-1] + 1].tobytes()


def write_wav(path: str | Path, pcm: bytes, rate: int = RATE) -> None:
    """16-bit mono PCM as a WAV file."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def play(pcm: bytes, *, device: int | str | None = None) -> None:
    """Play 16 kHz s16le mono PCM on an output device through sounddevice (blocks until done)."""
    import numpy as np

    try:
        import sounddevice
    except OSError as exc:  # PortAudio missing
        raise VoiceError(f"no audio output: {exc}", ErrorCode.AUDIO_DEVICE) from None
    try:
        sounddevice.play(np.frombuffer(pcm, dtype="<i2"), RATE, device=device, blocking=True)
    except sounddevice.PortAudioError as exc:
        raise VoiceError(f"cannot play on {device or 'the default output'}: {exc}", ErrorCode.AUDIO_DEVICE) from None


@dataclass
class Voice:
    """What a device says: spoken through espeak-ng and a loudspeaker when it can, shown as text
    always (`show`), and kept (`said`) for the caller."""

    speak: bool = True
    voice: str = "en-us"
    speed: int = 160
    device: int | str | None = None
    show: Callable[[str], None] = field(default=lambda text: None)
    said: list[str] = field(default_factory=list)
    _warned: bool = False

    async def say(self, text: str) -> None:
        self.said.append(text)
        self.show(text)
        if not self.speak:
            return
        if not espeak_available():
            if not self._warned:
                log.warning("espeak-ng is not installed: prompts are shown as text only")
                self._warned = True
            return
        pcm = await asyncio.to_thread(synthesize, text, voice=self.voice, speed=self.speed)
        try:
            await asyncio.to_thread(play, pcm, device=self.device)
        except VoiceError as exc:
            if not self._warned:
                log.warning("prompts are shown as text only: %s", exc)
                self._warned = True
