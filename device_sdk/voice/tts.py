"""Speech out: espeak-ng synthesises the read-back and the prompts; sounddevice plays them.

`synthesize` gives 16 kHz s16le mono PCM (the pipeline's format), so the same audio can be
played on a loudspeaker, written to a WAV, or fed straight into a recogniser in tests and in the
evaluation. Where espeak-ng is absent, `device_sdk.voice.assistant.Voice` shows the prompts as text only.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

from device_sdk.protocol.errors import ErrorCode, VoiceError

from .sources import RATE, to_mono_16k


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
