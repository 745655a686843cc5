"""`device-sdk bench asr`: the recogniser alone, on synthesised speech, with no bus and no dialog.

- Commands: each case's command (the voice and speed of the case) decoded with the command
  grammar between stretches of digital silence, parsed by the reference agent's parser, and
  compared with the case's `expect`.
- Replies: every accept and decline phrase in five voices, decoded with the reply grammar and
  judged as the voice pipeline judges them (`reply_text`, then `interpret_reply`).
- Non-answers: things said to a speaker that are no answer (`NON_ANSWERS`), in the same voices;
  each one heard as an accept phrase is a false accept, the failure that matters most.

One engine decodes everything, in order, as a device's would. `noise_floor` sets
`SphinxEngine.noise_floor` (docs/voice.md, "A noise floor") and the `reply_` arguments the reply
grammar's search settings, so a change to either can be weighed: replies heard against non-answers accepted. The
figures repeat from run to run (seeded noise, one thread).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from device_sdk.protocol.errors import AgentError
from device_sdk.protocol.fields import Decision
from device_sdk.voice.asr import Recognition, transcribe
from device_sdk.voice.grammar import Grammar, reply_grammar
from device_sdk.voice.replies import ACCEPT_PHRASES, DECLINE_PHRASES, interpret_reply
from device_sdk.voice.reply_audio import reply_text
from device_sdk.voice.sphinx import SphinxEngine
from device_sdk.voice.tts import synthesize, trim_silence
from device_sdk.voice.whisper import WhisperEngine, install_base_model

from .catalog import demo_catalog
from .command_parser import CommandParser
from .voice_eval import load_cases

VOICES = (("en-us", 160), ("en-gb", 150), ("en-us+f3", 140), ("en-us+m3", 175), ("en-us", 130))
NON_ANSWERS = (
    "yesterday was fun", "what is the weather like", "maybe later", "i am not sure", "tell me a joke",
    "how much is it", "buy two packs of double a batteries", "add three bags of rice to my cart", "what time is it",
    "play some music", "confirmation number please", "never mind", "hello there", "is that the cheapest one",
    "the weather is nice today", "wait", "hmm", "what is the delivery time", "set a timer for ten minutes",
    "turn off the lights", "call my mother", "read me the news", "conform", "place it on the table", "okay",
)  # fmt: skip
_BEFORE, _AFTER = bytes(2 * 4800), bytes(2 * 8000)  # 0.3 s and 0.5 s of digital silence, as endpointing cuts


def _spoken(text: str, voice: str, speed: int) -> bytes:
    return _BEFORE + trim_silence(synthesize(text, voice=voice, speed=speed)) + _AFTER


class _Timed:
    def __init__(self, engine: SphinxEngine) -> None:
        self.engine, self.busy_s, self.audio_s = engine, 0.0, 0.0

    def __call__(self, pcm: bytes, grammar: Grammar) -> Recognition:
        started = time.perf_counter()
        heard = transcribe(self.engine, pcm, grammar)
        self.busy_s += time.perf_counter() - started
        self.audio_s += len(pcm) / 32000
        return heard


def run_bench_asr(
    case_files: Iterable[str | Path],
    *,
    noise_floor: float | None = None,
    reply_word_penalty: float | None = None,
    reply_silence_prob: float | None = None,
    voices: Sequence[tuple[str, int]] = VOICES,
) -> dict[str, Any]:
    """The `reply_` settings replace the reply grammar's own (`Grammar.word_penalty`,
    `Grammar.silence_prob`) when given."""
    engine = SphinxEngine() if noise_floor is None else SphinxEngine(noise_floor=noise_floor)
    decode = _Timed(engine)
    parser = CommandParser(demo_catalog())
    commands = parser.vocabulary().command_grammar()
    replies = reply_grammar()
    if reply_word_penalty is not None:
        replies = dataclasses.replace(replies, word_penalty=reply_word_penalty)
    if reply_silence_prob is not None:
        replies = dataclasses.replace(replies, silence_prob=reply_silence_prob)

    command_misses: list[dict[str, Any]] = []
    count = 0
    for path in case_files:
        for case in load_cases(path):
            if not case.command:
                continue
            count += 1
            heard = decode(_spoken(case.command, case.voice, case.speed), commands).text
            try:
                cart = sorted((line.product.sku, line.qty) for line in parser.parse(heard))
            except AgentError:
                cart = []
            if cart != sorted((line.sku, line.qty) for line in case.expect):
                command_misses.append({"id": case.id, "said": case.command, "heard": heard})

    reply_misses: list[dict[str, Any]] = []
    false_accepts: list[dict[str, Any]] = []
    for voice, speed in voices:
        for phrase in sorted(ACCEPT_PHRASES | DECLINE_PHRASES):
            pcm = _spoken(phrase, voice, speed)
            answer = reply_text(decode(pcm, replies), pcm)
            expected = Decision.CONFIRM if phrase in ACCEPT_PHRASES else Decision.DECLINE
            if interpret_reply(answer) is not expected:
                reply_misses.append({"said": phrase, "voice": voice, "speed": speed, "heard": answer})
        for phrase in NON_ANSWERS:
            pcm = _spoken(phrase, voice, speed)
            answer = reply_text(decode(pcm, replies), pcm)
            if interpret_reply(answer) is Decision.CONFIRM:
                false_accepts.append({"said": phrase, "voice": voice, "speed": speed, "heard": answer})

    phrases = len(voices) * len(ACCEPT_PHRASES | DECLINE_PHRASES)
    return {
        **whisper_figures(),
        "noise_floor": engine.noise_floor,
        "reply_word_penalty": replies.word_penalty,
        "reply_silence_prob": replies.silence_prob,
        "commands": count,
        "command_accuracy": round(1 - len(command_misses) / count, 4) if count else None,
        "replies": phrases,
        "reply_accuracy": round(1 - len(reply_misses) / phrases, 4),
        "non_answers": len(voices) * len(NON_ANSWERS),
        "false_accepts": len(false_accepts),
        "asr_rtf": round(decode.busy_s / decode.audio_s, 4),
        "command_misses": command_misses,
        "reply_misses": reply_misses,
        "false_accept_cases": false_accepts,
    }


def whisper_figures() -> dict[str, Any]:
    """Whisper's first load (model already installed) and peak memory, in a process of its own that
    loads it, warms it and decodes a reply: `whisper_load_s`, `whisper_peak_rss_mb`."""
    done = subprocess.run(
        [sys.executable, "-m", "simulators.asr_bench", "whisper"], capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        return {"whisper_error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def _whisper_child() -> None:
    install_base_model()  # the one-time install is not the load being measured
    engine = WhisperEngine()
    load_s = engine.load_seconds
    engine.warm()
    started = time.perf_counter()
    engine.transcribe(_spoken("yes please buy it", "en-us", 160), max_new_tokens=24)
    reply_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"whisper_load_s": round(load_s, 3), "whisper_reply_s": round(reply_s, 3),
                      "whisper_peak_rss_mb": round(peak, 1)}))  # fmt: skip


if __name__ == "__main__" and sys.argv[1:] == ["whisper"]:
    _whisper_child()
