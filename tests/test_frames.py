"""The BLE frame protocol (`firmware_bridge.frames`): exact bytes, reassembly of reordered,
duplicated and missing chunks, typed errors for anything malformed, and a fuzzed decoder."""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.protocol.errors import ErrorCode, FrameError
from firmware_bridge.frames import MAX_CHUNKS, Message, MessageType, Reassembler, chunk_count, encode

VECTORS = Path(__file__).resolve().parent.parent / "docs" / "ble-frame-vectors.json"
CODES = {
    ErrorCode.BAD_FRAME,
    ErrorCode.BAD_CRC,
    ErrorCode.TOO_LARGE,
    ErrorCode.UNKNOWN_TYPE,
    ErrorCode.UNSUPPORTED_VERSION,
}
PHOTO = bytes(random.Random(7).getrandbits(8) for _ in range(102_400))


def feed_all(reassembler: Reassembler, frames: list[bytes]) -> list[Message]:
    return [message for frame in frames if (message := reassembler.feed(frame, 0.0)) is not None]


def test_the_test_vectors_are_exactly_what_the_encoder_writes() -> None:
    vectors = json.loads(VECTORS.read_text())
    assert len(vectors) >= 3
    for vector in vectors:
        payload = bytes.fromhex(vector["payload_hex"])
        frames = encode(MessageType[vector["type"]], vector["seq"], payload, vector["att_payload"])
        assert [frame.hex() for frame in frames] == vector["frames_hex"], vector["name"]
        decoded = feed_all(Reassembler(vector["att_payload"]), [bytes.fromhex(f) for f in vector["frames_hex"]])
        assert decoded == [Message(MessageType[vector["type"]], vector["seq"], payload)]


def test_the_header_layout_byte_by_byte() -> None:
    frames = encode(MessageType.EVENT, 0x1234 + 8 * 3, b"hello", 20)
    seq = 0x1234 + 24
    assert frames == [
        bytes([0x00, (seq & 7) << 5])  # chunk 0, sequence low bits in bits 13 to 15
        + bytes([1, MessageType.EVENT])
        + seq.to_bytes(2, "little")
        + (5).to_bytes(4, "little")
        + zlib.crc32(b"hello").to_bytes(4, "little")
        + b"hello"
    ]


def test_a_100_kb_photo_at_mtu_247_takes_424_frames_of_at_most_244_bytes() -> None:
    frames = encode(MessageType.IMAGE, 1, PHOTO, 244)
    assert len(frames) == chunk_count(len(PHOTO), 244) == 424
    assert all(len(frame) == 244 for frame in frames[:-1]) and 2 < len(frames[-1]) <= 244
    assert round(-(-len(PHOTO) // 244) / len(frames), 4) == 0.9906


def test_reordered_and_duplicated_chunks_give_the_message_once() -> None:
    frames = encode(MessageType.IMAGE, 9, PHOTO, 244)
    shuffled = frames + frames[::7]
    random.Random(3).shuffle(shuffled)
    reassembler = Reassembler(244)
    assert feed_all(reassembler, shuffled) == [Message(MessageType.IMAGE, 9, PHOTO)]
    assert feed_all(reassembler, frames[:3]) == [] and reassembler.missing() == []  # late duplicates


def test_missing_chunks_are_named_and_a_selective_retransmit_completes() -> None:
    frames = encode(MessageType.AUDIO, 2, PHOTO[:5000], 100)
    lost = {0, 5, 6, len(frames) - 1}
    reassembler = Reassembler(100)
    assert feed_all(reassembler, [f for i, f in enumerate(frames) if i not in lost]) == []
    assert reassembler.missing() == [0]  # the header has not come: everything is unknown but chunk 0
    assert reassembler.feed(frames[0], 0.0) is None
    assert reassembler.missing() == sorted(lost - {0})
    assert feed_all(reassembler, [frames[i] for i in reassembler.missing()]) == [
        Message(MessageType.AUDIO, 2, PHOTO[:5000])
    ]


def test_a_corrupted_payload_is_a_crc_error_and_the_next_message_still_arrives() -> None:
    frames = encode(MessageType.IMAGE, 4, PHOTO[:3000], 244)
    broken = bytearray(frames[3])
    broken[10] ^= 0x01
    reassembler = Reassembler(244)
    with pytest.raises(FrameError) as crc:
        feed_all(reassembler, [*frames[:3], bytes(broken), *frames[4:]])
    assert crc.value.code is ErrorCode.BAD_CRC
    assert feed_all(reassembler, encode(MessageType.IMAGE, 5, b"next", 244)) == [Message(MessageType.IMAGE, 5, b"next")]


def test_an_oversized_message_is_refused_with_a_code_on_both_sides() -> None:
    with pytest.raises(FrameError) as sending:
        encode(MessageType.IMAGE, 1, bytes(2000), 244, max_message=1000)
    assert sending.value.code is ErrorCode.TOO_LARGE
    reassembler = Reassembler(244, max_message=1000)
    with pytest.raises(FrameError) as receiving:
        reassembler.feed(encode(MessageType.IMAGE, 1, bytes(2000), 244)[0], 0.0)
    assert receiving.value.code is ErrorCode.TOO_LARGE
    with pytest.raises(FrameError):
        encode(MessageType.IMAGE, 1, bytes(MAX_CHUNKS * 20), 20, max_message=1 << 30)


def test_malformed_frames_get_typed_errors_and_lose_the_message_in_progress_nothing() -> None:
    frames = encode(MessageType.CONTROL, 6, PHOTO[:1000], 64)
    reassembler = Reassembler(64)
    assert feed_all(reassembler, frames[:-1]) == []
    bad = {
        "short": (b"\x00", ErrorCode.BAD_FRAME),
        "long": (bytes(65), ErrorCode.BAD_FRAME),
        "version": (bytes([0, 1 << 5, 9, 1]) + bytes(10), ErrorCode.UNSUPPORTED_VERSION),
        "type": (bytes([0, 1 << 5, 1, 99, 1, 0]) + bytes(8), ErrorCode.UNKNOWN_TYPE),
        "chunk past the end": (frames[-1][:1] + bytes([frames[-1][1] | 0x1F]) + frames[-1][2:], ErrorCode.BAD_FRAME),
        "short last chunk": (frames[-1][:-1], ErrorCode.BAD_FRAME),
    }
    for name, (frame, code) in bad.items():
        with pytest.raises(FrameError) as error:
            reassembler.feed(frame, 0.0)
        assert error.value.code is code, name
    assert reassembler.dropped == 0
    assert reassembler.feed(frames[-1], 0.0) == Message(MessageType.CONTROL, 6, PHOTO[:1000])


def test_an_unfinished_message_expires_and_a_new_sequence_number_replaces_it() -> None:
    first = encode(MessageType.AUDIO, 1, PHOTO[:2000], 244)
    reassembler = Reassembler(244, timeout_s=2.0)
    reassembler.feed(first[0], 10.0)
    assert not reassembler.expire(11.0) and reassembler.expire(12.5) and reassembler.missing() == []
    reassembler.feed(first[0], 20.0)
    assert feed_all(reassembler, encode(MessageType.AUDIO, 2, b"new", 244)) == [Message(MessageType.AUDIO, 2, b"new")]
    assert reassembler.dropped == 2


def test_a_sender_that_restarts_its_count_is_heard_and_a_stray_early_chunk_is_asked_again() -> None:
    reassembler = Reassembler(64)
    assert feed_all(reassembler, encode(MessageType.EVENT, 0, b"first", 64)) == [
        Message(MessageType.EVENT, 0, b"first")
    ]
    assert feed_all(reassembler, encode(MessageType.EVENT, 0, b"first", 64)) == []  # the same message again
    restarted = encode(MessageType.EVENT, 8, b"after a reconnect", 64)  # same low bits, another number
    assert feed_all(reassembler, restarted) == [Message(MessageType.EVENT, 8, b"after a reconnect")]
    frames = encode(MessageType.IMAGE, 3, PHOTO[:500], 64)
    stray = frames[2][:2] + b"\x00" * 7  # chunk 2, before chunk 0, and too short for it
    assert reassembler.feed(stray, 0.0) is None and reassembler.feed(frames[0], 0.0) is None
    assert 2 in reassembler.missing()
    assert feed_all(reassembler, frames[1:]) == [Message(MessageType.IMAGE, 3, PHOTO[:500])]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=80), max_size=40))
def test_the_decoder_never_crashes_on_arbitrary_frames(frames: list[bytes]) -> None:
    reassembler = Reassembler(64, max_message=4096)
    for frame in frames:
        codes = []
        try:
            message = reassembler.feed(frame, 0.0)
        except FrameError as error:
            codes.append(error.code)
            message = None
        assert set(codes) <= CODES and (message is None or len(message.payload) <= 4096)
    held = reassembler._partial
    assert held is None or len(held.buffer) + sum(len(c) for c in held.early.values()) <= 4096 + 62


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=3000),
    st.integers(min_value=20, max_value=514),
    st.integers(min_value=0, max_value=0xFFFF),
    st.randoms(use_true_random=False),
)
def test_any_message_survives_any_order_of_its_frames(
    payload: bytes, att_payload: int, seq: int, order: random.Random
) -> None:
    frames = encode(MessageType.DISPLAY, seq, payload, att_payload)
    order.shuffle(frames)
    assert feed_all(Reassembler(att_payload), frames) == [Message(MessageType.DISPLAY, seq, payload)]


def test_bench_frames_prints_the_efficiency_and_the_codec_speed(capsys: pytest.CaptureFixture[str]) -> None:
    from device_sdk.cli import main

    assert main(["bench", "frames", "--repeats", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["frames"], report["min_frames"], report["efficiency"]) == (424, 420, 0.9906)
    assert 0 < report["codec_mb_s"] <= min(report["encode_mb_s"], report["decode_mb_s"])
