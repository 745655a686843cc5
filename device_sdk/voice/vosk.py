"""vosk (Kaldi) on a model directory from configuration or `DEVICE_SDK_VOSK_MODEL`, never
downloaded; runtime grammars only on models built for them, others refused with `bad_grammar`."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sdk.protocol.errors import ErrorCode, VoiceError

from .asr import Recognition, Word
from .grammar import Grammar
from .sources import RATE

log = logging.getLogger(__name__)

VOSK_MODEL_ENV = "DEVICE_SDK_VOSK_MODEL"


class VoskEngine:
    """vosk on a model directory: `model`, else `$DEVICE_SDK_VOSK_MODEL`; never downloads one."""

    name = "vosk"

    def __init__(self, model: str | Path | None = None) -> None:
        path = model or os.environ.get(VOSK_MODEL_ENV)
        if not path:
            raise VoiceError(f"no vosk model: give its directory or set {VOSK_MODEL_ENV}", ErrorCode.NO_MODEL)
        self.path = Path(path)
        if not (self.path / "am").is_dir() or not (self.path / "conf").is_dir():
            raise VoiceError(f"{self.path} is not a vosk model directory (no am/ and conf/)", ErrorCode.NO_MODEL)
        import vosk

        vosk.SetLogLevel(-1)
        try:
            self.model = vosk.Model(model_path=str(self.path))
        except Exception as exc:  # vosk raises a bare Exception when Kaldi cannot load the model
            raise VoiceError(f"vosk could not load {self.path}: {exc}", ErrorCode.NO_MODEL) from None
        graph = self.path / "graph"
        self.supports_grammar = (graph / "HCLr.fst").exists() and (graph / "Gr.fst").exists()
        words = graph / "words.txt"
        self.vocabulary: frozenset[str] | None = (
            frozenset(line.split()[0] for line in words.read_text(encoding="utf-8").splitlines() if line.strip())
            if words.exists()
            else None
        )

    def check_grammar(self, grammar: Grammar) -> list[str]:
        """The grammar's words the model cannot recognise (empty when it has no word list to check
        against); `bad_grammar` when the model takes no runtime grammar or knows none of the words."""
        if not self.supports_grammar:
            raise VoiceError(
                f"{self.path} takes no runtime grammar (it needs graph/HCLr.fst and graph/Gr.fst)",
                ErrorCode.BAD_GRAMMAR,
            )
        if self.vocabulary is None:
            log.warning("vosk model %s has no graph/words.txt: words it lacks are ignored unseen", self.path)
            return []
        missing = sorted(grammar.words - self.vocabulary)
        if len(missing) == len(grammar.words):
            raise VoiceError(f"the vosk model knows none of the words of grammar {grammar.name}", ErrorCode.BAD_GRAMMAR)
        if missing:
            log.warning("vosk model %s lacks %d grammar words, ignored: %s", self.path, len(missing), missing[:20])
        return missing

    def recognizer(self, grammar: Grammar | None = None) -> VoskRecognizer:
        import vosk

        if grammar is None:
            kaldi = vosk.KaldiRecognizer(self.model, RATE)
        else:
            self.check_grammar(grammar)
            kaldi = vosk.KaldiRecognizer(self.model, RATE, json.dumps([*grammar.phrases, "[unk]"]))
        kaldi.SetWords(True)
        return VoskRecognizer(kaldi, grammar.name if grammar else None)

    def spotter(self, phrase: str, threshold: float = 0.0) -> VoskRecognizer:
        """The wake phrase through a grammar of the phrase and `[unk]` (vosk has no detection
        threshold: `threshold` is not used)."""
        import vosk

        kaldi = vosk.KaldiRecognizer(self.model, RATE, json.dumps([phrase.lower(), "[unk]"]))
        return VoskRecognizer(kaldi, "wake")


@dataclass
class VoskRecognizer:
    kaldi: Any
    grammar: str | None
    _segments: list[dict[str, Any]] = field(default_factory=list)
    _last: str = ""
    _done: bool = False

    def _text(self, partial: str = "") -> str:
        return " ".join(" ".join([*(s.get("text", "") for s in self._segments), partial]).split())

    def accept(self, pcm: bytes) -> Recognition | None:
        if self._done:
            raise VoiceError("this recognizer has given its result", ErrorCode.ASR_FAILED)
        if self.kaldi.AcceptWaveform(pcm):  # vosk closed a segment at a pause of its own
            self._segments.append(json.loads(self.kaldi.Result()))
            text = self._text()
        else:
            text = self._text(json.loads(self.kaldi.PartialResult()).get("partial", ""))
        if text == self._last:
            return None
        self._last = text
        return Recognition(text, final=False, engine="vosk", grammar=self.grammar)

    def close(self) -> None:
        self._done = True

    def result(self) -> Recognition:
        if self._done:
            raise VoiceError("this recognizer has given its result", ErrorCode.ASR_FAILED)
        self._done = True
        self._segments.append(json.loads(self.kaldi.FinalResult()))
        words = tuple(
            Word(w["word"], float(w["start"]), float(w["end"]), float(w["conf"]))
            for segment in self._segments
            for w in segment.get("result", [])
        )
        confidence = min((w.confidence for w in words if w.confidence is not None), default=None)
        return Recognition(self._text(), True, confidence, words, "vosk", self.grammar)
