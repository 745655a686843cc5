"""Whisper base as installed from its packages: the one-time join and check, offline decoding, and
the guards against what it does on noise."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from device_sdk.protocol.errors import ErrorCode, VoiceError
from device_sdk.voice import whisper
from device_sdk.voice.tts import espeak_available, synthesize, trim_silence
from device_sdk.voice.whisper import MODEL_SHA256, WhisperEngine, install_base_model, runaway

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (./dev test installs it)")


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    made = WhisperEngine()
    made.warm()
    return made


def test_the_model_is_joined_once_and_checked(tmp_path: Path) -> None:
    said: list[str] = []
    target = install_base_model(tmp_path / "whisper", progress=said.append)
    model = target / "model.bin"
    digest = hashlib.sha256()
    with model.open("rb") as data:
        while block := data.read(1 << 22):
            digest.update(block)
    assert digest.hexdigest() == MODEL_SHA256
    assert {p.name for p in target.iterdir()} == {"model.bin", "model.sha256", *whisper.MODEL_FILES}
    assert len(said) == 2 and "once" in said[0]
    stamp = model.stat().st_mtime_ns
    assert install_base_model(tmp_path / "whisper", progress=said.append) == target
    assert len(said) == 2 and model.stat().st_mtime_ns == stamp  # checked before: used as it is


def test_a_model_that_is_not_the_published_one_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two packages whose halves join into other bytes: no model.bin is left behind."""
    for number in (1, 2):
        data = tmp_path / "site" / f"fake_part{number}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"model.bin.part{number}").write_bytes(b"not a model" * number)
        for name in whisper.MODEL_FILES:
            (data / name).write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(whisper, "MODEL_PARTS", ("fake_part1", "fake_part2"))
    with pytest.raises(VoiceError, match="not the published one") as caught:
        install_base_model(tmp_path / "cache", progress=lambda line: None)
    assert caught.value.code == ErrorCode.NO_MODEL
    assert not (tmp_path / "cache" / "model.bin").exists()
    assert not list((tmp_path / "cache").glob(".model.bin.*"))


def test_a_missing_model_package_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(whisper, "MODEL_PARTS", ("no_such_package_part1", "no_such_package_part2"))
    with pytest.raises(VoiceError, match=r"device-sdk\[whisper\]"):
        install_base_model(tmp_path / "cache", progress=lambda line: None)


def test_a_directory_that_is_no_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(VoiceError, match="not a CTranslate2 Whisper model") as caught:
        WhisperEngine(tmp_path)
    assert caught.value.code == ErrorCode.NO_MODEL


def test_runaway_loops_are_recognised() -> None:
    assert runaway("我认认认认认认认")
    assert runaway("no no no no no")
    assert runaway("la la la la la la")
    assert not runaway("Yes, please buy it.")
    assert not runaway("cancel the order")
    assert not runaway("确认下单")


def test_the_model_loads_from_the_cache_with_the_hub_switched_off(engine: WhisperEngine) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert engine.model is None  # the default: Whisper base from its packages, in the user's cache
    assert (whisper.cache_dir() / "model.sha256").read_text().strip() == MODEL_SHA256


@needs_espeak
def test_whisper_hears_a_reply_and_not_silence_or_noise(engine: WhisperEngine) -> None:
    heard = engine.transcribe(trim_silence(synthesize("yes please buy it")))
    assert "please buy it" in heard.lower()
    assert engine.transcribe(b"\x00\x00" * 16000) == ""
    noise = np.random.default_rng(1).normal(0, 3000, 32000).clip(-32768, 32767).astype("<i2").tobytes()
    assert engine.transcribe(noise, max_new_tokens=24).strip(" .") == ""


def test_half_samples_are_refused(engine: WhisperEngine) -> None:
    with pytest.raises(VoiceError) as caught:
        engine.transcribe(b"\x01\x02\x03")
    assert caught.value.code == ErrorCode.BAD_AUDIO


def test_whisper_spots_no_wake_word(engine: WhisperEngine) -> None:
    with pytest.raises(VoiceError, match="wake word"):
        engine.spotter("hey shop")
