"""Spoken Chinese: a zh-CN device hears with Whisper in Chinese, chosen by its locale; replies are
judged by the locale's exact phrases; the near misses that hold an accept word (不确认, 确认一下价格,
确定吗 ...) never confirm in the natural Mandarin voice or in espeak-ng's; a noise burst costs one
Whisper call; and a zh-CN speaker orders by voice end to end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.device.client import DeviceClient
from device_sdk.locale import locale_for
from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.fields import Decision
from device_sdk.voice.asr import transcribe
from device_sdk.voice.assistant import VoiceConfig
from device_sdk.voice.engines import Hearing, hearing_named
from device_sdk.voice.grammar import reply_grammar
from device_sdk.voice.reply_audio import reply_text
from device_sdk.voice.reply_judge import Judgement, ReplyJudge
from device_sdk.voice.sources import RATE
from device_sdk.voice.sphinx import SphinxEngine
from device_sdk.voice.tts import espeak_available
from device_sdk.voice.whisper import WhisperEngine, once, simplified
from simulators import natural_voice_zh
from simulators.command_parser import CommandParser
from simulators.scenario import DEFAULTS, ShopBackend, run_demo
from simulators.user_voices import speak
from simulators.voice_eval import run_eval
from simulators.voice_user import converse

ZH = "zh-CN"
DATA = Path(__file__).parent / "data"
NEAR_MISSES = ("不确认", "先不确认", "确认一下价格", "别确认", "确定吗", "不确定", "不是的", "先别确认", "确认了吗")
"""Refusals and questions that hold an accept word: Whisper writes them as they are said."""
ACCEPTS = ("确认", "确认下单", "是的，确认", "确定")
DECLINES = ("取消", "不要了", "算了")
VOICES = (natural_voice_zh.NAME, "cmn-latn-pinyin", "cmn-latn-pinyin+f3")


def test_whisper_writes_chinese_in_simplified_characters() -> None:
    assert simplified("確認下單，還有兩瓶牛奶", "zh") == "确认下单，还有两瓶牛奶"
    assert simplified("Confirm.", "en") == "Confirm." and simplified("確認", "en") == "確認"


def test_a_chinese_phrase_the_short_window_repeats_counts_once() -> None:
    assert once("确认确认") == "确认" and once("确认，确认。") == "确认"
    assert once("谢谢") == "谢谢" and once("确认下单") == "确认下单"


@pytest.fixture(scope="module")
def hearing() -> Hearing:
    return hearing_named(locale=ZH)


def test_the_locale_chooses_whisper_in_chinese_with_no_flag(hearing: Hearing) -> None:
    assert hearing.name == "whisper" and isinstance(hearing.engine, WhisperEngine)
    assert hearing.engine.language == "zh" and hearing.judge.locale == ZH and hearing.fallback is None
    with pytest.raises(ConfigError, match="Whisper only"):
        hearing_named("hybrid", locale=ZH)  # pocketsphinx has no Mandarin model
    with pytest.raises(ConfigError):
        ReplyJudge(guard=SphinxEngine(), locale=ZH)  # the forced choice is English


def say(text: str, voice: str) -> bytes:
    if voice == natural_voice_zh.NAME:
        return speak(text, voice)
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (./dev test installs it)")
    return speak(text, voice, 150)


def hear(hearing: Hearing, pcm: bytes) -> Judgement:
    """A reply as the assistant judges it: Whisper's transcript on the reply grammar, then the judge."""

    async def judged() -> Judgement:
        first = reply_text(transcribe(hearing.engine, pcm, reply_grammar()), pcm)

        async def heard() -> str:
            return first

        return await hearing.judge.judge(pcm, heard())

    return asyncio.run(judged())


@pytest.mark.parametrize("voice", VOICES)
def test_no_chinese_near_miss_confirms(hearing: Hearing, voice: str) -> None:
    confirmed = {}
    for text in NEAR_MISSES:
        judged = hear(hearing, say(text, voice))
        if judged.decision is Decision.CONFIRM:
            confirmed[text] = judged.first
    assert confirmed == {}


def test_the_natural_voice_s_accepts_confirm_and_declines_decline(hearing: Hearing) -> None:
    voice = natural_voice_zh.NAME
    heard = {text: hear(hearing, say(text, voice)) for text in ACCEPTS + DECLINES}
    missed = [text for text in ACCEPTS if heard[text].decision is not Decision.CONFIRM]
    assert len(missed) <= 1, {text: heard[text].first for text in missed}
    assert all(heard[text].decision is Decision.DECLINE for text in DECLINES), {t: heard[t].first for t in DECLINES}


@pytest.fixture
async def backend() -> AsyncIterator[ShopBackend]:
    async with EmbeddedBroker() as broker, ShopBackend(broker.url, shared=False) as shop:
        yield shop


async def test_a_noise_burst_costs_one_whisper_call_and_the_device_asks_in_chinese(
    backend: ShopBackend, hearing: Hearing, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = hearing.engine
    assert isinstance(engine, WhisperEngine)
    calls: list[int] = []
    real = engine.transcribe

    def counted(pcm: bytes, **options: object) -> str:
        calls.append(len(pcm))
        return real(pcm, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "transcribe", counted)
    noise = np.random.default_rng(7).normal(0, 6000, RATE).clip(-32768, 32767).astype("<i2").tobytes()
    key = await asyncio.to_thread(backend.provision, "speaker-zh-noise")
    vocabulary = CommandParser(backend.catalog).vocabulary()
    async with DeviceClient(backend.url, "speaker-zh-noise", topics=backend.topics, key=key, locale=ZH) as device:
        run, user = await asyncio.wait_for(
            converse(device, hearing, vocabulary, noise, [], config=VoiceConfig(command_attempts=2)), 60
        )
    assert run.outcome == "not_understood" and run.offer is None
    assert len(calls) == 1, calls  # the second attempt heard silence: nothing to decode
    assert locale_for(ZH).voice.ask_again in user.heard


async def test_a_chinese_speaker_orders_by_voice(hearing: Hearing) -> None:
    say_text, reply = DEFAULTS[ZH]
    result = await run_demo(say_text, [reply], voice=True, hearing=hearing, locale=ZH)
    assert result.run.heard_command is not None and result.ordered, (result.run.heard_command, result.run.heard)
    offer = result.run.offer
    assert offer is not None and offer.request.proposal.locale == ZH
    assert sorted((line.sku, line.qty) for line in offer.request.proposal.lines) == [("bat-aa-4", 2), ("milk-1l", 1)]
    assert result.orders_placed == 1 and result.run.presented[0].startswith("请确认您的订单")


async def test_spoken_chinese_cases_order_what_was_said_and_nothing_unconfirmed() -> None:
    """Our own spoken cases (never tuned on), said by the natural voice: the targets of the zh-CN
    work, and the report names the engine the locale chose."""
    report = (await run_eval(DATA / "voice-spoken-zh.jsonl")).as_dict()
    zh = report["by_locale"][ZH]
    assert zh["engine"] == "whisper" and zh["cases"] == 30
    assert report["false_confirmations"] == 0
    assert zh["single_task_success"] >= 0.75 and zh["multi_task_success"] >= 0.55, zh
    assert zh["latin_items"]["cases"] >= 1
