"""ASR engines by name, as the command line and the evaluation choose them, and the hearing a voice
pipeline is built with: the engine for commands and a judge for replies."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.protocol.errors import ConfigError, ErrorCode, VoiceError

from .asr import AsrEngine
from .reply_judge import ReplyJudge
from .sphinx import SphinxEngine
from .vosk import VoskEngine
from .whisper import WhisperEngine

ENGINES = ("hybrid", "sphinx", "vosk", "whisper")
"""`hybrid`: pocketsphinx for commands and the first hearing of a reply, Whisper as the second
opinion, and the forced choice against near misses. The others run alone."""


def engine_named(name: str, model: str | Path | None = None) -> AsrEngine:
    """One engine alone: `sphinx`, `vosk` or `whisper`, on `model` where it takes one."""
    if name == "sphinx":
        return SphinxEngine(model)
    if name == "vosk":
        return VoskEngine(model)
    if name == "whisper":
        return WhisperEngine(model)
    raise VoiceError(f"no ASR engine {name!r}: {', '.join(ENGINES)}", ErrorCode.NO_MODEL)


@dataclass(frozen=True)
class Hearing:
    """What a voice pipeline hears with: `engine` for commands (and a reply's first hearing), and
    `judge` for the decision on a reply."""

    name: str
    engine: AsrEngine
    judge: ReplyJudge
    fallback: AsrEngine | None = None
    """Hears, with no grammar, a command the grammar did not (None: the engine's own language model)."""

    @classmethod
    def of(cls, engine: AsrEngine) -> Hearing:
        """One engine alone: its replies need the forced choice where it is pocketsphinx."""
        return cls(engine.name, engine, ReplyJudge(guard=engine if isinstance(engine, SphinxEngine) else None))


def hearing_named(
    name: str | None = None, *, model: str | Path | None = None, whisper_model: str | Path | None = None,
    locale: str = DEFAULT_LOCALE,
) -> Hearing:  # fmt: skip
    """The hearing `name` (one of `ENGINES`; None: the locale's own), loaded and warmed: a pipeline
    that starts with it pays for no model on its first reply. `model` is the sphinx or vosk model,
    `whisper_model` a CTranslate2 Whisper directory (default: Whisper base from its packages).

    The locale chooses with no flag: a language pocketsphinx has a model of (en-US) is heard by the
    hybrid, another (zh-CN) by Whisper alone in that language, its replies judged by the locale's
    exact phrases; naming an engine of another language for it is a `ConfigError`."""
    data = locale_for(locale)
    if data.voice.hearing == "whisper":
        if name not in (None, "whisper"):
            raise ConfigError(f"{locale} is heard by Whisper only: no {name} model speaks {data.language}")
        whisper = WhisperEngine(whisper_model or model, language=data.language)
        whisper.warm()
        return Hearing("whisper", whisper, ReplyJudge(locale=locale))
    name = name or "hybrid"
    if name == "hybrid":
        sphinx = SphinxEngine(model)
        whisper = WhisperEngine(whisper_model, language=data.language)
        whisper.warm()
        return Hearing(name, sphinx, ReplyJudge(second=whisper, guard=sphinx), fallback=whisper)
    if name == "whisper":
        alone = WhisperEngine(whisper_model or model, language=data.language)
        alone.warm()
        # Whisper alone writes "Confirm." for "conform": its English accepts need the forced choice
        return Hearing(name, alone, ReplyJudge(guard=SphinxEngine()))
    return Hearing.of(engine_named(name, model))
