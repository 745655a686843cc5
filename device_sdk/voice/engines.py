"""ASR engines by name, as the command line and the evaluation choose them."""

from __future__ import annotations

from pathlib import Path

from device_sdk.protocol.errors import ErrorCode, VoiceError

from .asr import AsrEngine
from .sphinx import SphinxEngine
from .vosk import VoskEngine


def engine_named(name: str, model: str | Path | None = None) -> AsrEngine:
    if name == "sphinx":
        return SphinxEngine(model)
    if name == "vosk":
        return VoskEngine(model)
    raise VoiceError(f"no ASR engine {name!r}: sphinx or vosk", ErrorCode.NO_MODEL)
