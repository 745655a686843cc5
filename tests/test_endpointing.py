"""Audio sources and endpointing: WAV files of any PCM shape, bus streams, and utterances found on
sample time, with real speech synthesised by espeak-ng."""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import subprocess
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from device_sdk.media.audio import AudioChunk, AudioStream
from device_sdk.protocol.messages import AudioFormat
from device_sdk.voice.endpointing import EndpointConfig, Endpointer, utterances
from device_sdk.voice.sources import RATE, AudioError, Pcm, StreamSource, WavSource, read_wav


def write_wav(path: Path, frames: bytes, rate: int = RATE, width: int = 2, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(frames)
    return path


def tone(seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * 440 * t)


def espeak(tmp_path: Path, text: str) -> Path:
    if not shutil.which("espeak-ng"):
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is missing in CI: ./dev test installs it with apt-get")
        pytest.skip("espeak-ng is not installed (./dev test installs it: apt-get install espeak-ng)")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, timeout=30)
    return path


# reading and converting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "width", "channels"), [(16000, 2, 1), (22050, 2, 1), (44100, 2, 2), (8000, 1, 1), (48000, 3, 2),
                                    (16000, 4, 1)],
)  # fmt: skip
def test_any_pcm_wav_becomes_16k_mono_int16(tmp_path: Path, rate: int, width: int, channels: int) -> None:
    wave_ = tone(0.5, rate)
    if width == 1:
        data = np.round(wave_ * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(wave_ * (2**23 - 1)).astype("<i4").tobytes()
        data = b"".join(ints[i : i + 3] for i in range(0, len(ints), 4))
    else:
        data = np.round(wave_ * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    if channels == 2:
        step = width
        data = b"".join(data[i : i + step] * 2 for i in range(0, len(data), step))
    samples = read_wav(write_wav(tmp_path / "in.wav", data, rate, width, channels))
    assert samples.dtype == np.dtype("<i2")
    assert abs(len(samples) - RATE // 2) <= 2
    peak = np.abs(samples[200:-200]).max() / 32767
    assert 0.45 < peak < 0.55  # the level survives the conversion


@pytest.mark.parametrize("damage", ["not-wav", "truncated", "compressed", "empty"])
def test_bad_audio_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "bad.wav"
    good = write_wav(tmp_path / "good.wav", b"\x01\x00" * RATE).read_bytes()
    if damage == "not-wav":
        path.write_bytes(b"ID3 this is an mp3" * 10)
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "compressed":
        path.write_bytes(good[:20] + struct.pack("<H", 3) + good[22:])  # format tag 3: float, not PCM
    else:
        path.write_bytes(b"")
    with pytest.raises(AudioError) as caught:
        WavSource(path)
    assert caught.value.code == "bad_audio"


async def test_a_wav_source_paces_itself_only_when_asked(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "t.wav", np.zeros(RATE // 2, dtype="<i2").tobytes())
    for realtime, bounds in ((False, (0.0, 0.2)), (True, (0.35, 2.0))):
        started = time.monotonic()
        blocks = [block async for block in WavSource(path, realtime=realtime, block_ms=100)]
        assert bounds[0] <= time.monotonic() - started <= bounds[1]
        assert [b.offset for b in blocks] == list(range(0, RATE // 2, 1600))


async def test_a_bus_stream_is_resampled_and_keeps_its_gaps() -> None:
    stream = AudioStream("speaker-1", "ses_1", 1, AudioFormat(rate=8000), keep=True)
    block = np.round(tone(0.1, 8000) * 20000).astype("<i2").tobytes()  # 800 samples
    stream.feed(AudioChunk(1, 0, 0, block))
    stream.feed(AudioChunk(1, 2, 1600, block, last=True))  # chunk 1 was lost
    out = [pcm async for pcm in StreamSource(stream)]
    assert out[0].offset == 0 and out[-1].end <= 4800
    assert any(pcm.offset >= 3200 for pcm in out)  # the second block sits after the gap, at 16 kHz
    assert sum(pcm.samples for pcm in out) == pytest.approx(3200, abs=64)


# endpointing ------------------------------------------------------------------------------


def run(samples: np.ndarray, config: EndpointConfig | None = None, block: int = 1600) -> list[tuple[float, float, str]]:
    endpointer = Endpointer(config or EndpointConfig())
    found = []
    for i in range(0, len(samples), block):
        found += endpointer.feed(Pcm(i, samples[i : i + block].tobytes()))
    last = endpointer.finish()
    found += [last] if last else []
    return [(u.start / RATE, u.end / RATE, u.ended_by) for u in found]


def test_silence_and_quiet_noise_hold_no_utterance() -> None:
    assert run(np.zeros(RATE * 3, dtype="<i2")) == []
    noise = np.random.default_rng(7).normal(0, 200, RATE * 3).astype("<i2")
    assert run(noise) == []


def test_speech_between_silences_is_one_utterance_on_sample_time(tmp_path: Path) -> None:
    speech = read_wav(espeak(tmp_path, "buy two packs of double a batteries"))
    silence = np.zeros(RATE, dtype="<i2")
    samples = np.concatenate([silence, speech, silence])
    found = run(samples)
    assert len(found) == 1
    start, end, ended_by = found[0]
    assert 0.6 <= start <= 1.0 and ended_by == "silence"  # 0.3 s of pre-roll before the voice
    assert end <= 1.0 + len(speech) / RATE + 0.7
    assert run(samples, block=480) == run(samples, block=3200) == found  # blocks of any size: same answer


async def test_a_file_and_a_paced_file_give_the_same_utterances(tmp_path: Path) -> None:
    speech = read_wav(espeak(tmp_path, "confirm the order"))
    path = write_wav(tmp_path / "u.wav", np.concatenate([np.zeros(RATE // 2, dtype="<i2"), speech]).tobytes())
    fast = [(u.start, u.end) async for u in utterances(WavSource(path))]
    paced = [(u.start, u.end) async for u in utterances(WavSource(path, realtime=True, block_ms=200))]
    assert fast == paced and len(fast) == 1


def test_an_utterance_is_cut_at_the_maximum_length(tmp_path: Path) -> None:
    speech = read_wav(espeak(tmp_path, "one two three four five six seven eight nine ten eleven twelve"))
    found = run(speech, EndpointConfig(max_s=1.5))
    assert found[0][2] == "max_length"
    assert found[0][1] - found[0][0] <= 1.5 + 0.3 + 0.03  # the pre-roll comes before the limit's start


def test_lost_audio_counts_as_silence(tmp_path: Path) -> None:
    speech = read_wav(espeak(tmp_path, "yes please buy it"))
    endpointer = Endpointer()
    ended = endpointer.feed(Pcm(0, speech.tobytes()))
    ended += endpointer.feed(Pcm(len(speech) + RATE, b"\x00\x00" * 160))  # a second of audio never came
    assert len(ended) == 1 and ended[0].ended_by == "silence"


async def test_a_resampled_stream_without_gaps_is_one_continuous_timeline() -> None:
    stream = AudioStream("speaker-1", "ses_1", 1, AudioFormat(rate=8000), keep=True)
    block = np.round(tone(0.1, 8000) * 20000).astype("<i2").tobytes()
    for seq in range(10):
        stream.feed(AudioChunk(1, seq, seq * 800, block, last=seq == 9))
    out = [pcm async for pcm in StreamSource(stream)]
    assert all(a.end == b.offset for a, b in itertools.pairwise(out))  # no gap, no overlap
    assert out[-1].end == pytest.approx(16000, abs=32)


def test_a_shorter_end_closes_an_answer_sooner_and_the_configured_one_comes_back(tmp_path: Path) -> None:
    speech = read_wav(espeak(tmp_path, "yes please buy it"))
    audio = np.concatenate([np.zeros(RATE // 2, dtype="<i2"), speech, np.zeros(RATE * 2, dtype="<i2")])

    def end_of_speech(endpointer: Endpointer) -> int:
        ended = [u for i in range(0, len(audio), 480) for u in endpointer.feed(Pcm(i, audio[i : i + 480].tobytes()))]
        assert len(ended) == 1 and ended[0].ended_by == "silence"
        return ended[0].end

    default = end_of_speech(Endpointer(EndpointConfig(end_s=0.6)))
    quick = Endpointer(EndpointConfig(end_s=0.6))
    quick.end_after(0.3)
    assert default - end_of_speech(quick) == pytest.approx(0.3 * RATE, abs=0.03 * RATE)
    restored = Endpointer(EndpointConfig(end_s=0.6))
    restored.end_after(0.3)
    restored.end_after(None)
    assert end_of_speech(restored) == default
    with pytest.raises(ValueError, match="positive"):
        restored.end_after(0)
