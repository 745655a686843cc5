"""Speech recognition engines behind one interface: `engine.recognizer(grammar)` gives a
`Recognizer` for one utterance; feed it 16 kHz s16le mono PCM with `accept` (a partial
`Recognition` comes back when the hypothesis changed) and end it with `result` (the final one,
with word timings and confidence where the engine gives them).

- `SphinxEngine` (`sphinx.py`): pocketsphinx with the en-us model in its wheel, the engine that
  works out of the box. JSGF grammars (words missing from its dictionary get espeak-ng
  pronunciations), the open language model when no grammar is given, and keyphrase spotting for
  the wake word.
- `VoskEngine` (`vosk.py`): vosk (Kaldi) on a model directory from configuration or
  `DEVICE_SDK_VOSK_MODEL`, never downloaded. Runtime grammars on models built for them
  (`graph/HCLr.fst` and `graph/Gr.fst`); a grammar on any other model is refused with
  `bad_grammar`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .grammar import Grammar


@dataclass(frozen=True)
class Word:
    text: str
    start: float
    """Seconds from the start of the utterance."""
    end: float
    confidence: float | None = None


@dataclass(frozen=True)
class Recognition:
    text: str
    final: bool
    confidence: float | None = None
    """0 to 1 where the engine gives one: the lowest word posterior (pocketsphinx) or word
    confidence (vosk)."""
    words: tuple[Word, ...] = ()
    engine: str = ""
    grammar: str | None = None


class Recognizer(Protocol):
    def accept(self, pcm: bytes) -> Recognition | None: ...

    def result(self) -> Recognition: ...

    def close(self) -> None:
        """Done without a result (the engine may reuse what the recogniser held)."""


class AsrEngine(Protocol):
    name: str

    def recognizer(self, grammar: Grammar | None = None) -> Recognizer: ...

    def spotter(self, phrase: str, threshold: float) -> Recognizer: ...


def transcribe(engine: AsrEngine, pcm: bytes, grammar: Grammar | None = None) -> Recognition:
    """A whole utterance at once."""
    recognizer = engine.recognizer(grammar)
    recognizer.accept(pcm)
    return recognizer.result()
