"""pocketsphinx with the en-us model in its wheel: JSGF grammars (words missing from its dictionary
get espeak-ng pronunciations), the open language model, and keyphrase spotting for the wake word."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device_sdk.protocol.errors import ConfigError, ErrorCode, VoiceError

from .asr import Recognition, Word
from .grammar import UNKNOWN, Grammar
from .lexicon import pronunciations
from .sources import RATE

_FRAMES_PER_S = 100  # pocketsphinx's frame rate
WARM_S = 5.0
"""Audio a pocketsphinx decoder hears before its live cepstral mean counts as adapted."""


_NOT_WORDS = {"<s>", "</s>", "<sil>", "[NOISE]", "[BREATH]", "[COUGH]", "[SMACK]", "[UH]", "[UM]"}


class SphinxEngine:
    """pocketsphinx; `model` is an acoustic model directory (default: the en-us model in the wheel),
    `dictionary` a pronunciation dictionary (default: the CMU dictionary beside it).

    `noise_floor` is the standard deviation, in int16 steps, of the low noise every recognizer
    adds to its audio (about -64 dBFS at 20). A microphone never gives exact zeros, and the en-us
    model never heard them: on the digital silence of synthesised, gated or streamed audio its
    live cepstral mean and its silence model go wrong, and whole commands came out as garbage
    (see docs/voice.md, "A noise floor"). Real microphone audio, already noisier, changes little.
    0 turns it off.

    `word_penalty` is the word insertion probability in grammar searches (pocketsphinx's `wip`,
    0.65 by default there) unless the grammar brings its own. The garbage loop spends one word
    per phone, so a low value makes it expensive wherever real words fit and leaves it the
    cheaper path only for speech that is not in the grammar (see docs/voice.md)."""

    name = "sphinx"

    def __init__(
        self,
        model: str | Path | None = None,
        dictionary: str | Path | None = None,
        *,
        word_penalty: float = 1e-3,
        noise_floor: float = 20.0,
    ) -> None:
        import pocketsphinx

        if noise_floor < 0:
            raise ConfigError(f"noise_floor is 0 or more, not {noise_floor}")
        self.word_penalty = word_penalty
        self.noise_floor = noise_floor
        base = Path(pocketsphinx.get_model_path()) / "en-us"
        self._config: dict[str, Any] = {
            "hmm": str(model or base / "en-us"),
            "dict": str(dictionary or base / "cmudict-en-us.dict"),
            "samprate": RATE,
            "loglevel": "FATAL",
            "fwdflat": False,  # one forward pass: several times faster, the same words on commands
            "bestpath": False,
        }
        for key in ("hmm", "dict"):
            if not Path(self._config[key]).exists():
                raise VoiceError(f"pocketsphinx {key} {self._config[key]} does not exist", ErrorCode.NO_MODEL)
        self._lm = base / "en-us.lm.bin" if model is None else None
        self._idle: dict[str, list[Any]] = {}
        self._heard: dict[int, float] = {}
        self._lock = threading.Lock()

    def _decoder(self, key: str, setup: Any, **extra: Any) -> Any:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if idle:
                return idle.pop()
        from pocketsphinx import Decoder

        config = {**self._config, **extra}
        if key == "_lm":
            if self._lm is None:
                raise VoiceError("no language model for this acoustic model: give a grammar", ErrorCode.NO_MODEL)
            config["lm"] = str(self._lm)
        else:
            config["lm"] = None
            config["wip"] = extra.get("wip", self.word_penalty)
        try:
            decoder = Decoder(**config)
            setup(decoder)
        except RuntimeError as exc:
            raise VoiceError(f"pocketsphinx refused {key}: {exc}", ErrorCode.BAD_GRAMMAR) from None
        return decoder

    def _release(self, key: str, decoder: Any) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(decoder)

    def _warm_up(self, decoder: Any, seconds: float) -> bool:
        """Count `seconds` more audio heard by `decoder`; True while its live cepstral mean is
        still cold (under `WARM_S` heard before this utterance), so the utterance is decoded
        again with the mean it adapted to. A fresh decoder heard "please buy a pack of socks"
        as "please buy two pack of socks", and the second pass got it right."""
        with self._lock:
            before = self._heard.get(id(decoder), 0.0)
            self._heard[id(decoder)] = before + seconds
        return before < WARM_S

    def _add_words(self, decoder: Any, words: Iterable[str]) -> None:
        """Words missing from the dictionary get espeak-ng's pronunciation."""
        missing = sorted(w for w in words if decoder.lookup_word(w) is None)
        found = pronunciations(missing) if missing else {}
        for i, word in enumerate(missing):
            decoder.add_word(word, found[word], update=i == len(missing) - 1)

    def recognizer(self, grammar: Grammar | None = None) -> SphinxRecognizer:
        if grammar is None:
            decoder = self._decoder("_lm", lambda d: None)
            return SphinxRecognizer(self, "_lm", decoder, None, noise_floor=self.noise_floor)

        def setup(decoder: Any) -> None:
            self._add_words(decoder, grammar.words)
            for word, phones in grammar.lexicon:
                decoder.add_word(word, phones, update=False)
            decoder.add_jsgf_string(grammar.name, grammar.jsgf)
            decoder.activate_search(grammar.name)

        key = f"jsgf:{grammar.name}:{hash(grammar.jsgf)}:{grammar.word_penalty}:{grammar.silence_prob}"
        tuning: dict[str, float] = {"wip": self.word_penalty if grammar.word_penalty is None else grammar.word_penalty}
        if grammar.silence_prob is not None:
            tuning["silprob"] = grammar.silence_prob
        decoder = self._decoder(key, setup, **tuning)
        return SphinxRecognizer(self, key, decoder, grammar.name, grammar.garbage, noise_floor=self.noise_floor)

    def spotter(self, phrase: str, threshold: float = 1e-40) -> SphinxRecognizer:
        """Keyphrase spotting: a non-empty partial as soon as `phrase` is heard."""
        words = phrase.lower().split()

        def setup(decoder: Any) -> None:
            self._add_words(decoder, words)
            decoder.add_keyphrase("wake", " ".join(words))
            decoder.activate_search("wake")

        key = f"kws:{' '.join(words)}:{threshold:g}"
        decoder = self._decoder(key, setup, kws_threshold=threshold)
        return SphinxRecognizer(self, key, decoder, "wake", noise_floor=self.noise_floor)


@dataclass
class SphinxRecognizer:
    """One utterance on a pooled decoder. Partials come from a live pass as audio arrives; when
    that pass heard nothing, or took the garbage path, the utterance is decoded again,
    normalised by the cepstral mean the live pass adapted to. pocketsphinx adapts that mean
    slowly, from the model's default: a decoder that had not yet heard a few utterances took
    "buy a dog food" for garbage and "confirm" for silence (see docs/voice.md, "Two passes")."""

    engine: SphinxEngine
    key: str
    decoder: Any
    grammar: str | None
    garbage: frozenset[str] = frozenset()
    noise_floor: float = 0.0
    _last: str = ""
    _open: bool = field(default=False)
    _done: bool = field(default=False)
    _audio: list[bytes] = field(default_factory=list)
    _noise: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def accept(self, pcm: bytes) -> Recognition | None:
        if self._done:
            raise VoiceError("this recognizer has given its result", ErrorCode.ASR_FAILED)
        if len(pcm) % 2:
            raise VoiceError("PCM for recognition is whole 16-bit samples", ErrorCode.BAD_AUDIO)
        if self.noise_floor and pcm:
            samples = np.frombuffer(pcm, dtype="<i2") + self._noise.normal(0.0, self.noise_floor, len(pcm) // 2)
            pcm = np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
        if not self._open:
            self.decoder.start_utt()
            self._open = True
        self._audio.append(pcm)
        self.decoder.process_raw(pcm, False, False)
        hyp = self.decoder.hyp()
        text = self._clean(hyp.hypstr) if hyp is not None else ""
        if text == self._last:
            return None
        self._last = text
        return Recognition(text, final=False, engine="sphinx", grammar=self.grammar)

    def close(self) -> None:
        if not self._done:
            self._done = True
            if self._open:
                self.decoder.end_utt()
            self.engine._release(self.key, self.decoder)

    def result(self) -> Recognition:
        if self._done:
            raise VoiceError("this recognizer has given its result", ErrorCode.ASR_FAILED)
        self._done = True
        try:
            if not self._open:
                self.decoder.start_utt()
            self.decoder.end_utt()
            first = self.decoder.hyp()
            unclear = first is None or not first.hypstr.strip() or any(w in self.garbage for w in first.hypstr.split())
            cold = self.engine._warm_up(self.decoder, sum(len(chunk) for chunk in self._audio) / (2 * RATE))
            if self._audio and (unclear or cold):  # again, normalised by the mean the first pass adapted to
                self.decoder.set_cmn(self.decoder.get_cmn(True))
                self.decoder.start_utt()
                self.decoder.process_raw(b"".join(self._audio), False, False)
                self.decoder.end_utt()
            hyp = self.decoder.hyp()
            words: list[Word] = []
            for seg in self.decoder.seg() if hyp is not None else ():
                token = seg.word.split("(")[0]
                if not token or token in _NOT_WORDS:
                    continue
                start, end = seg.start_frame / _FRAMES_PER_S, (seg.end_frame + 1) / _FRAMES_PER_S
                if token in self.garbage:
                    if words and words[-1].text == UNKNOWN:
                        words[-1] = Word(UNKNOWN, words[-1].start, end)
                        continue
                    words.append(Word(UNKNOWN, start, end))
                    continue
                words.append(Word(token, start, end, min(1.0, max(0.0, seg.prob))))
        finally:
            self.engine._release(self.key, self.decoder)
        text = self._clean(hyp.hypstr) if hyp is not None else ""
        confidence = min((w.confidence for w in words if w.confidence is not None), default=None)
        return Recognition(text, True, confidence, tuple(words), "sphinx", self.grammar)

    def _clean(self, text: str) -> str:
        """Garbage-loop words as one `[unk]` per stretch."""
        words: list[str] = []
        for word in text.split():
            word = UNKNOWN if word in self.garbage else word
            if not (word == UNKNOWN and words and words[-1] == UNKNOWN):
                words.append(word)
        return " ".join(words)
