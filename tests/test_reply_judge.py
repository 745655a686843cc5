"""The decision on a spoken reply: the table as a unit, and near misses said by espeak-ng and by a
natural voice (Piper) through every hearing, of which none may confirm."""

from __future__ import annotations

import asyncio

import pytest

from device_sdk.protocol.fields import Decision
from device_sdk.voice.asr import transcribe
from device_sdk.voice.grammar import reply_grammar
from device_sdk.voice.reply_audio import reply_text
from device_sdk.voice.reply_judge import (
    Judgement,
    Opinion,
    ReplyJudge,
    Verdict,
    decide,
    forced_choice_grammar,
    opinion,
    rival_phrases,
)
from device_sdk.voice.sphinx import SphinxEngine
from device_sdk.voice.tts import espeak_available, synthesize, trim_silence
from device_sdk.voice.whisper import WhisperEngine
from simulators import natural_voice

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (./dev test installs it)")

NEAR_MISSES = (
    "conform", "con form", "inform", "concern", "comfort", "confirmation", "confirmation?", "don't confirm",
    "i can't confirm", "do not confirm", "unconfirmed", "can you confirm", "confirm later", "not yet",
    "yes please don't buy it", "yes but not now", "yet", "less", "perform", "reform", "in form", "can form",
)  # fmt: skip
"""Replies that are not a yes. "guess" is left out: every hearing, by both voices, hears "yes"
(docs/voice.md: the known limit)."""
ACCEPTS = ("confirm", "yes confirm", "confirm the order", "yes please buy it", "place the order", "yes")
VOICES = ("en-us", "joe")
EVERY_VOICE = ("en-us", "en-us@180", "en-gb", "en-us+f3", "en-us+m3", "joe", "joe@1.15")
"""Every voice the project's cases speak with (espeak-ng's robotic ones at their speeds, and the
natural one): a near miss must not confirm in any of them. en-US is the one locale so far."""


@pytest.mark.parametrize(
    ("first", "second", "guard", "decision"),
    [
        ("cancel", None, None, Decision.DECLINE),
        ("cancel", Opinion.NEUTRAL, Verdict.RIVAL, Decision.DECLINE),
        ("no", Opinion.ACCEPT, Verdict.ACCEPT, None),  # contradiction: ask again
        ("confirm", Opinion.VETO, Verdict.ACCEPT, None),
        ("confirm", Opinion.DECLINE, Verdict.ACCEPT, None),
        ("confirm", Opinion.SUPPORTS, Verdict.RIVAL, Decision.CONFIRM),
        ("confirm", Opinion.ACCEPT, Verdict.NONE, Decision.CONFIRM),
        ("confirm", Opinion.NEUTRAL, Verdict.ACCEPT, Decision.CONFIRM),
        ("confirm", Opinion.NEUTRAL, Verdict.RIVAL, None),
        ("confirm", Opinion.NEUTRAL, Verdict.NONE, None),
        ("yes", Opinion.ACCEPT, Verdict.RIVAL, None),  # "yet", "guess": every hearing must agree
        ("yes", Opinion.ACCEPT, Verdict.ACCEPT, Decision.CONFIRM),
        ("yes", Opinion.NEUTRAL, Verdict.ACCEPT, None),
        ("[unk]", Opinion.ACCEPT, Verdict.ACCEPT, Decision.CONFIRM),
        ("[unk]", Opinion.ACCEPT, Verdict.RIVAL, None),
        ("[unk]", Opinion.ACCEPT, Verdict.NONE, Decision.CONFIRM),  # pocketsphinx hears nothing at all
        ("[unk]", Opinion.DECLINE, None, Decision.DECLINE),
        ("[unk]", Opinion.NEUTRAL, Verdict.ACCEPT, None),
        ("confirm", None, Verdict.ACCEPT, Decision.CONFIRM),  # pocketsphinx alone: the guard decides
        ("confirm", None, Verdict.RIVAL, None),
        ("confirm", None, None, Decision.CONFIRM),  # an engine alone, with no guard
    ],
)
def test_the_decision_table(
    first: str, second: Opinion | None, guard: Verdict | None, decision: Decision | None
) -> None:
    assert decide(first, second, guard)[0] is decision


@pytest.mark.parametrize(
    ("whisper", "first", "expected"),
    [
        ("Confirm.", "confirm", Opinion.ACCEPT),
        ("Yes, confirmed.", "yes confirm", Opinion.ACCEPT),  # "confirmed" counts as "confirm"
        ("Yes, I confirm.", "yes confirm", Opinion.SUPPORTS),
        ("Confirmed it order.", "confirm the order", Opinion.SUPPORTS),
        ("Good for him.", "confirm", Opinion.NEUTRAL),
        ("Okay, firm.", "confirm", Opinion.NEUTRAL),  # "confirm" cut in two: no other word
        ("Confirm the orrogo", "confirm the order", Opinion.NEUTRAL),  # garbled: no English word
        ("Yes, confirmed.", "[unk]", Opinion.ACCEPT),
        ("comfort.", "confirm", Opinion.VETO),
        ("Conform.", "confirm", Opinion.VETO),
        ("can form.", "confirm", Opinion.VETO),
        ("Confirm?", "confirm", Opinion.VETO),
        ("Don't confirm.", "confirm", Opinion.VETO),
        ("Confirmation", "confirm", Opinion.VETO),
        ("place the border", "place the order", Opinion.VETO),
        ("No thanks.", "[unk]", Opinion.DECLINE),
        ("", "confirm", Opinion.NEUTRAL),
        ("Yes.", "[unk]", Opinion.NEUTRAL),  # a bare yes from Whisper alone: "guess" and "yet" read so
        ("Yes.", "yes", Opinion.ACCEPT),
    ],
)
def test_whisper_opinions(whisper: str, first: str, expected: Opinion) -> None:
    assert opinion(whisper, first) is expected


def test_the_forced_choice_holds_each_accept_against_its_near_misses() -> None:
    assert "conform" in rival_phrases("confirm") and "guess" in rival_phrases("yes")
    assert "don't confirm the order" in rival_phrases("confirm the order")
    assert "yes please don't buy it" in rival_phrases("yes please buy it") and "comfort" in rival_phrases("confirm")
    assert not set(rival_phrases("confirm")) & {"confirm", "yes"}
    grammar = forced_choice_grammar()
    assert "<other>" not in grammar.jsgf  # a closed choice: no garbage path
    assert {"conform", "guess", "confirm"} <= grammar.words


@pytest.fixture(scope="module")
def judge() -> ReplyJudge:
    sphinx = SphinxEngine()
    whisper = WhisperEngine()
    whisper.warm()
    return ReplyJudge(second=whisper, guard=sphinx)


def say(text: str, voice: str) -> bytes:
    if natural_voice.is_natural(voice):
        return trim_silence(natural_voice.speak(text, voice))
    name, _, speed = voice.partition("@")
    return trim_silence(synthesize(text, voice=name, speed=int(speed or 160)))


def hear(judge: ReplyJudge, pcm: bytes) -> Judgement:
    assert judge.guard is not None
    grammar = reply_grammar()

    async def first() -> str:
        return reply_text(await asyncio.to_thread(transcribe, judge.guard, pcm, grammar), pcm)  # type: ignore[arg-type]

    return asyncio.run(judge.judge(pcm, first()))


@needs_espeak
@pytest.mark.parametrize("hearing", ["hybrid", "sphinx"])
@pytest.mark.parametrize("voice", EVERY_VOICE)
def test_no_near_miss_confirms(judge: ReplyJudge, voice: str, hearing: str) -> None:
    """With Whisper's opinion (the default) and with pocketsphinx alone (`--engine sphinx`)."""
    if hearing == "sphinx":
        judge = ReplyJudge(guard=judge.guard)
    confirmed = {}
    for text in NEAR_MISSES:
        judged = hear(judge, say(text, voice))
        if judged.decision is Decision.CONFIRM:
            confirmed[text] = judged
    assert confirmed == {}


@needs_espeak
@pytest.mark.parametrize("voice", VOICES)
def test_the_accept_phrases_confirm_and_the_declines_decline(judge: ReplyJudge, voice: str) -> None:
    """When in doubt the judge asks again: a real accept may be missed now and then (a pooled
    decoder's history moves pocketsphinx's hearing), but not more than one phrase in six."""
    missed = [t for t in ACCEPTS if hear(judge, say(t, voice)).decision is not Decision.CONFIRM]
    assert len(missed) <= 1, missed
    for text in ("cancel the order", "no thanks", "don't buy it", "stop"):
        assert hear(judge, say(text, voice)).decision is Decision.DECLINE, text
