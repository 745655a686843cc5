"""Where speech comes from, behind one interface: an async iterator of `Pcm` blocks of 16 kHz,
16-bit, mono PCM, each stamped with its offset in samples since the start of the source.

- `WavSource`: a WAV file, as fast as possible or at real-time pace; any PCM WAV is converted
  (8, 16, 24 or 32-bit integer; mono or several channels, mixed down; any rate, resampled with
  soxr). Anything else (compressed, truncated, not a WAV) is an `AudioError` with code `bad_audio`.
- `StreamSource`: an audio stream that arrived over the bus (`Gateway.audio_streams()`), gaps
  included, resampled when the device sent another rate.

- `MicrophoneSource`: a live input device through sounddevice (PortAudio): 16 kHz, int16, mono
  when the device gives it, else the device's own rate resampled; choose the device by index or
  name (`list_microphones`). A block the reader did not take in time is dropped and counted, and
  its samples stay on the timeline as a gap.
"""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soxr

from device_sdk.media.audio import AudioStream
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode, VoiceError

RATE = 16_000
"""Samples per second of every source's output."""


class AudioError(DeviceSdkError, ValueError):
    """Audio that cannot be read or converted: not a WAV, compressed, truncated, an odd sample width."""

    code = ErrorCode.BAD_AUDIO


@dataclass(frozen=True)
class Pcm:
    """A block of 16 kHz s16le mono PCM starting `offset` samples after the source's start."""

    offset: int
    pcm: bytes

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def end(self) -> int:
        return self.offset + self.samples


class AudioSource(Protocol):
    def __aiter__(self) -> AsyncIterator[Pcm]: ...


def to_mono_16k(frames: bytes, rate: int, width: int, channels: int) -> np.ndarray:
    """Interleaved integer PCM of any width, channel count and rate, as int16 mono at 16 kHz."""
    if width not in (1, 2, 3, 4):
        raise AudioError(f"a sample width of {width} bytes is not PCM this SDK reads")
    if channels < 1 or rate < 1000 or rate > 384_000:
        raise AudioError(f"{channels} channels at {rate} Hz is not audio this SDK reads")
    whole = len(frames) - len(frames) % (width * channels)
    raw = np.frombuffer(frames[:whole], dtype=np.uint8)
    if width == 1:  # unsigned 8-bit
        samples = (raw.astype(np.int32) - 128) << 24
    elif width == 3:  # packed 24-bit little endian
        triples = raw.reshape(-1, 3).astype(np.int32)
        samples = (triples[:, 0] << 8) | (triples[:, 1] << 16) | (triples[:, 2] << 24)
    else:
        samples = np.frombuffer(raw.tobytes(), dtype="<i2" if width == 2 else "<i4").astype(np.int32)
        if width == 2:
            samples = samples << 16
    mono = samples.reshape(-1, channels).astype(np.float64).mean(axis=1) / 2**31
    if rate != RATE and len(mono):
        mono = soxr.resample(mono, rate, RATE)
    pcm: np.ndarray = np.clip(np.round(mono * 32767.0), -32768, 32767).astype("<i2")
    return pcm


def read_wav(path: str | Path) -> np.ndarray:
    """The whole file as int16 mono at 16 kHz, or `AudioError` saying what is wrong with it."""
    try:
        with wave.open(str(path), "rb") as wav:
            rate, width, channels, count = (wav.getframerate(), wav.getsampwidth(), wav.getnchannels(),
                                            wav.getnframes())  # fmt: skip
            frames = wav.readframes(count)
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"{path} is not a PCM WAV file: {exc}") from None
    except OSError as exc:
        raise AudioError(f"cannot read {path}: {exc.strerror}") from None
    if len(frames) < count * width * channels:
        raise AudioError(f"{path} is truncated: {len(frames)} of {count * width * channels} bytes of audio")
    return to_mono_16k(frames, rate, width, channels)


class WavSource:
    """A WAV file in blocks of `block_ms`, as fast as possible or, with `realtime`, at the pace of
    its own sample clock (as a microphone would deliver it)."""

    def __init__(self, path: str | Path, *, realtime: bool = False, block_ms: int = 100) -> None:
        if not 10 <= block_ms <= 1000:
            raise ValueError("block_ms is between 10 and 1000")
        self.path = Path(path)
        self.realtime = realtime
        self.block = RATE * block_ms // 1000
        self.samples = read_wav(self.path)  # read now: a bad file fails here, not mid-stream

    async def __aiter__(self) -> AsyncIterator[Pcm]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        for offset in range(0, len(self.samples), self.block):
            block = self.samples[offset : offset + self.block]
            if self.realtime:
                await asyncio.sleep(max(0.0, started + offset / RATE - loop.time()))
            yield Pcm(offset, block.tobytes())


class StreamSource:
    """An audio stream from a device on the bus, at 16 kHz (resampled if the device sent another
    rate); a lost chunk (QoS 0) leaves a gap in the offsets."""

    def __init__(self, stream: AudioStream) -> None:
        self.stream = stream

    async def __aiter__(self) -> AsyncIterator[Pcm]:
        rate = self.stream.format.rate
        if rate == RATE:
            async for chunk in self.stream:
                yield Pcm(chunk.offset, chunk.pcm)
            return
        resampler = soxr.ResampleStream(rate, RATE, 1, dtype="int16")
        produced, consumed, flushed = 0, 0, True  # output samples; input samples; resampler drained
        nothing = np.zeros(0, dtype="<i2")
        async for chunk in self.stream:
            if chunk.offset > consumed:  # a gap: drain, keep the timeline, start afresh after it
                tail = resampler.resample_chunk(nothing, last=True) if not flushed else nothing
                if len(tail):
                    yield Pcm(produced, tail.astype("<i2").tobytes())
                produced = chunk.offset * RATE // rate
                resampler = soxr.ResampleStream(rate, RATE, 1, dtype="int16")
            block = np.frombuffer(chunk.pcm, dtype="<i2")
            consumed = chunk.offset + len(block)
            out = resampler.resample_chunk(block, last=chunk.last)
            flushed = chunk.last
            if len(out):
                yield Pcm(produced, out.astype("<i2").tobytes())
                produced += len(out)
        if not flushed:
            tail = resampler.resample_chunk(nothing, last=True)
            if len(tail):
                yield Pcm(produced, tail.astype("<i2").tobytes())


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # raised at import when the PortAudio library is missing
        raise VoiceError(f"no audio input: {exc} (apt-get install libportaudio2)", ErrorCode.AUDIO_DEVICE) from None
    return sounddevice


def list_microphones() -> list[dict[str, Any]]:
    """Input devices as sounddevice sees them: `index`, `name`, `channels`, `default_rate`."""
    sd = _sounddevice()
    return [
        {"index": i, "name": d["name"], "channels": d["max_input_channels"], "default_rate": d["default_samplerate"]}
        for i, d in enumerate(sd.query_devices())
        if d["max_input_channels"] > 0
    ]


class MicrophoneSource:
    """A live microphone in blocks of `block_ms`, stamped by the samples captured so far."""

    def __init__(self, device: int | str | None = None, *, block_ms: int = 100, queue_blocks: int = 50) -> None:
        if not 10 <= block_ms <= 1000:
            raise ValueError("block_ms is between 10 and 1000")
        self.device = device
        self.block_ms = block_ms
        self.dropped = 0
        self._queue_blocks = queue_blocks

    def _open(self, sd: Any, callback: Any) -> tuple[Any, int]:
        """An input stream at 16 kHz if the device takes it, else at its default rate."""
        try:
            sd.check_input_settings(device=self.device, channels=1, dtype="int16", samplerate=RATE)
            rate = RATE
        except (sd.PortAudioError, ValueError):
            try:
                rate = int(sd.query_devices(self.device, "input")["default_samplerate"])
            except (sd.PortAudioError, ValueError) as exc:
                raise VoiceError(f"no input device {self.device!r}: {exc}", ErrorCode.AUDIO_DEVICE) from None
        try:
            stream = sd.RawInputStream(
                samplerate=rate,
                blocksize=rate * self.block_ms // 1000,
                device=self.device,
                channels=1,
                dtype="int16",
                callback=callback,
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise VoiceError(f"cannot open input device {self.device!r}: {exc}", ErrorCode.AUDIO_DEVICE) from None
        return stream, rate

    async def __aiter__(self) -> AsyncIterator[Pcm]:
        sd = _sounddevice()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(self._queue_blocks)
        captured = 0  # samples at the device's rate, counted in the audio thread

        def put(item: tuple[int, bytes]) -> None:
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self.dropped += 1

        def callback(data: Any, frames: int, _time: Any, _status: Any) -> None:
            nonlocal captured
            loop.call_soon_threadsafe(put, (captured, bytes(data)))
            captured += frames

        stream, rate = self._open(sd, callback)
        resampler = None if rate == RATE else soxr.ResampleStream(rate, RATE, 1, dtype="int16")
        produced = 0
        with stream:
            while True:
                offset, pcm = await queue.get()
                if resampler is None:
                    yield Pcm(offset, pcm)
                    continue
                out = resampler.resample_chunk(np.frombuffer(pcm, dtype="<i2"))
                produced = max(produced, offset * RATE // rate)
                if len(out):
                    yield Pcm(produced, out.astype("<i2").tobytes())
                    produced += len(out)
