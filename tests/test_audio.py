"""Audio at QoS 0: the chunk codec, and a stream from a device to the gateway over both brokers."""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.bus.mqtt import MqttBus
from device_sdk.media.audio import HEADER, MAX_CHUNK, AudioChunk, AudioStream, decode_chunk
from device_sdk.protocol.errors import ErrorCode, ProtocolError
from device_sdk.protocol.messages import AudioFormat, Error, decode
from device_sdk.protocol.topics import Topics
from simulators.scenario import ShopBackend
from tests.conftest import Restartable, keyed

T = Topics()


def tone(seconds: float, rate: int = 16000, hz: float = 440.0) -> bytes:
    n = int(seconds * rate)
    return struct.pack(f"<{n}h", *(int(12000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)))


def test_chunk_round_trip_and_header_layout() -> None:
    chunk = AudioChunk(stream=7, seq=3, offset=4800, pcm=b"\x01\x02\x03\x04", last=True)
    data = chunk.encode()
    assert data[:16] == bytes.fromhex("01 01 0700 03000000 c012000000000000")
    assert decode_chunk(data) == chunk
    assert chunk.samples() == 2


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x01\x00", ErrorCode.BAD_AUDIO),
        (HEADER.pack(2, 0, 1, 0, 0) + b"\x00\x00", ErrorCode.BAD_AUDIO),
        (HEADER.pack(1, 0x80, 1, 0, 0), ErrorCode.BAD_AUDIO),
        (HEADER.pack(1, 0, 1, 0, 0) + b"\x00", ErrorCode.BAD_AUDIO),
        (HEADER.pack(1, 0, 1, 0, 0) + bytes(MAX_CHUNK), ErrorCode.TOO_LARGE),
    ],
)
def test_bad_chunks_are_refused_with_codes(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_chunk(data)
    assert caught.value.code == code


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_chunk_decoder(data: bytes) -> None:
    try:
        chunk = decode_chunk(data)
    except ProtocolError as exc:
        code = exc.code
    else:
        code = None
        assert chunk.encode() == data
    assert code in (None, ErrorCode.BAD_AUDIO, ErrorCode.TOO_LARGE)


async def test_stream_counts_gaps_and_ignores_late_chunks() -> None:
    stream = AudioStream("d", "s", 1, AudioFormat())
    stream.feed(AudioChunk(1, 0, 0, bytes(3200)))
    stream.feed(AudioChunk(1, 2, 3200, bytes(3200)))  # chunk 1 (samples 1600-3199) was lost
    stream.feed(AudioChunk(1, 1, 1600, bytes(3200)))  # and arrives too late to count
    stream.end(sent_samples=6400)
    assert stream.received_samples == 3200
    assert stream.lost_samples == 3200
    assert [chunk.seq async for chunk in stream] == [0, 2]


async def test_device_streams_audio_to_the_gateway(broker: Restartable) -> None:
    pcm = tone(1.0)
    chunk_bytes = 3200  # 100 ms at 16 kHz
    async with ShopBackend(broker.url) as shop, keyed(shop, broker) as device:
        streams = shop.gateway.audio_streams()
        sent = await device.stream_audio(
            "ses_audio", (pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes))
        )
        stream = await asyncio.wait_for(anext(streams), 5)
        received = await asyncio.wait_for(collect(stream), 5)
    assert (stream.device_id, stream.session_id, stream.format.rate) == ("speaker-1", "ses_audio", 16000)
    assert sent == 16000
    assert [c.offset for c in received] == list(range(0, 16000, 1600))  # sample-count timestamps
    assert b"".join(c.pcm for c in received) == pcm
    assert stream.sent_samples == 16000
    assert stream.lost_samples == 0


async def test_bad_audio_gets_coded_errors_on_the_down_topic(broker: Restartable) -> None:
    async with ShopBackend(broker.url), MqttBus(broker.url, "raw-device") as bus:
        down = await bus.subscribe(T.device_down("speaker-5"))
        audio = T.device_audio("speaker-5")
        cases = [
            (b"\x01", ErrorCode.BAD_AUDIO),
            (AudioChunk(9, 0, 0, b"\x00\x00").encode(), ErrorCode.UNKNOWN_STREAM),
        ]
        for payload, code in cases:
            await bus.publish(audio, payload, qos=0)
            message = decode((await down.get(5)).payload)
            assert isinstance(message, Error)
            assert message.code == code


async def collect(stream: AudioStream) -> list[AudioChunk]:
    return [chunk async for chunk in stream]


async def _chunks(pcm: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(pcm), size):
        yield pcm[i : i + size]
