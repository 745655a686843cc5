"""Flow control (`firmware_bridge.flow`): a credit window, batched acks and selective retransmit,
as a state machine over an in-memory link that loses, repeats and corrupts frames."""

from __future__ import annotations

import random

import pytest

from device_sdk.protocol.errors import ErrorCode, FrameError
from firmware_bridge.flow import Ack, AckStatus, Receiver, Sender, as_ranges
from firmware_bridge.frames import Message, MessageType, chunk_count

PHOTO = random.Random(5).randbytes(102_400)


def transfer(sender: Sender, receiver: Receiver, payload: bytes, loss: float, seed: int) -> Message:
    """Send one message through a link that drops data frames at random; acks always arrive."""
    chance = random.Random(seed)
    queue = sender.send(MessageType.IMAGE, payload)
    received: Message | None = None
    for _ in range(10_000):
        if not queue:
            if sender.done:
                break
            queue = sender.stalled()  # nothing in flight made the receiver ack: probe
        frame, queue = queue[0], queue[1:]
        if chance.random() < loss:
            continue
        message, ack = receiver.feed(frame, 0.0)
        received = message or received
        if ack is not None:
            queue += sender.on_ack(Ack.decode(ack.encode()))
    assert sender.done and received is not None
    return received


def test_a_photo_crosses_a_clean_link_with_an_ack_per_half_window_and_no_retransmit() -> None:
    sender, receiver = Sender(244, window=32), Receiver(244, window=32)
    assert transfer(sender, receiver, PHOTO, 0.0, 1) == Message(MessageType.IMAGE, 0, PHOTO)
    frames = chunk_count(len(PHOTO), 244)
    assert sender.sent == frames == 424 and sender.retransmitted == 0
    assert receiver.acks == frames // 16 + 1  # one per 16 chunks and the last


@pytest.mark.parametrize("loss", [0.05, 0.2])
def test_lost_frames_are_sent_again_selectively_and_the_photo_arrives_byte_identical(loss: float) -> None:
    sender, receiver = Sender(244, window=32), Receiver(244, window=32)
    assert transfer(sender, receiver, PHOTO, loss, 2).payload == PHOTO
    lost_share = sender.retransmitted / 424
    assert sender.retransmitted > 0 and lost_share < 3 * loss  # only the lost ones, give or take the probes


def test_the_sender_never_runs_more_than_a_window_past_the_first_missing_chunk() -> None:
    sender, receiver = Sender(244, window=8), Receiver(244, window=8)
    first = sender.send(MessageType.IMAGE, PHOTO)
    assert len(first) == 8
    for frame in first[1:]:  # chunk 0 lost
        _, ack = receiver.feed(frame, 0.0)
        assert ack is None  # the header is unknown: nothing to ack yet
    probe = sender.stalled()  # no ack has come: chunk 0 again, then the last frame
    assert probe == [first[0], first[-1]]
    _, ack = receiver.feed(probe[0], 0.0)  # the header: now the receiver can say where it stands
    assert ack is not None and ack.window_end == 8 + 8 and ack.missing == ()
    more = sender.on_ack(ack)
    assert [frame[0] for frame in more] == list(range(8, 16))  # chunks 8 to 15 (their index byte), nothing again


def test_a_message_whose_first_chunk_is_lost_every_time_but_the_probe_still_arrives() -> None:
    """Chunk 0 carries the header: a receiver without it cannot ack, so the probe carries it."""
    sender, receiver = Sender(244, window=8), Receiver(244, window=8)
    queue, lost, received = sender.send(MessageType.IMAGE, PHOTO[:5000]), 0, None
    for _ in range(1000):
        if not queue:
            if sender.done:
                break
            queue = sender.stalled()
        frame, queue = queue[0], queue[1:]
        if frame[0] == 0 and frame[1] & 0x1F == 0 and lost == 0:  # chunk 0, the first time
            lost += 1
            continue
        message, ack = receiver.feed(frame, 0.0)
        received = message or received
        if ack is not None:
            queue += sender.on_ack(ack)
    assert lost == 1 and sender.done and received is not None and received.payload == PHOTO[:5000]
    assert sender.stalled() == []  # done: nothing more to probe


def test_a_corrupted_message_is_refused_back_to_the_sender() -> None:
    sender, receiver = Sender(64, window=4), Receiver(64, window=4)
    frames = sender.send(MessageType.EVENT, b"x" * 100)
    broken = frames[1][:10] + bytes([frames[1][10] ^ 1]) + frames[1][11:]
    acks = [ack for frame in [frames[0], broken] if (ack := receiver.feed(frame, 0.0)[1]) is not None]
    assert [ack.status for ack in acks] == [AckStatus.REFUSED] and acks[0].seq == sender.seq
    with pytest.raises(FrameError) as refused:
        sender.on_ack(acks[0])
    assert refused.value.code is ErrorCode.BAD_CRC and sender.done
    again = sender.send(MessageType.EVENT, b"x" * 100)  # the link sends it again, as a new message
    assert [receiver.feed(frame, 0.0)[0] for frame in again][-1] == Message(MessageType.EVENT, 1, b"x" * 100)


def test_a_lost_completion_ack_is_given_again_when_the_sender_probes() -> None:
    sender, receiver = Sender(64, window=4), Receiver(64, window=4)
    frames = sender.send(MessageType.EVENT, b"done soon")
    message, ack = receiver.feed(frames[0], 0.0)
    assert message is not None and ack is not None and ack.status is AckStatus.COMPLETE  # and it is lost
    probe = sender.stalled()
    assert probe == frames
    _, again = receiver.feed(probe[0], 0.0)
    assert again == Ack(sender.seq, AckStatus.COMPLETE, 0)
    assert sender.on_ack(again) == [] and sender.done


def test_acks_round_trip_and_malformed_acks_get_typed_errors() -> None:
    ack = Ack(513, AckStatus.RECEIVING, 40, ((3, 2), (9, 1)))
    assert Ack.decode(ack.encode()) == ack
    assert ack.encode().hex() == "0102002800020300020009000100"
    for bad in (b"", b"\x00\x00\x00\x00", ack.encode()[:-1], b"\x00\x00\x07\x00\x00\x00"):
        with pytest.raises(FrameError) as error:
            Ack.decode(bad)
        assert error.value.code is ErrorCode.BAD_FRAME
    assert as_ranges([9, 3, 4, 5]) == ((3, 3), (9, 1))
    assert Sender(244).on_ack(ack) == []  # about no message of ours
