"""Flow control over the frame protocol: a credit window and batched acks, so the data path carries
no ack per frame, and a selective retransmit of exactly the chunks an ack names as missing.

An ack is the payload of a message of type `ACK`, sent the other way (docs/ble.md), little-endian:

    u16 sequence number of the message acknowledged
    u8  status: 0 receiving, 1 complete, 2 refused
    u16 window end: the sender may send chunks with an index below it
    u8  number of missing ranges, then per range u16 first chunk and u16 count

The receiver acks every `window // 2` new chunks and when the message is complete; the sender
keeps at most `window` chunks beyond the lowest one still missing in flight.

An ack is read as a request, never as an order: its ranges are clipped to chunks sent and not yet
known received (below the lowest missing chunk of an earlier ack), each chunk is sent again at most
once per ack, and one ack gives at most `window` chunks again and `window` new ones, so no ack,
however wide its ranges, makes the sender queue more than the window allows.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from device_sdk.protocol.errors import ConfigError, ErrorCode, FrameError

from .frames import DEFAULT_MAX_MESSAGE, Message, MessageType, Reassembler, encode

_ACK = struct.Struct("<HBHB")
_RANGE = struct.Struct("<HH")
MAX_RANGES = 32
DEFAULT_WINDOW = 32


class AckStatus(IntEnum):
    RECEIVING = 0
    COMPLETE = 1
    REFUSED = 2


@dataclass(frozen=True)
class Ack:
    seq: int
    status: AckStatus
    window_end: int
    missing: tuple[tuple[int, int], ...] = ()
    """(first chunk, count) ranges."""

    def encode(self) -> bytes:
        if len(self.missing) > MAX_RANGES:
            raise FrameError(f"an ack names at most {MAX_RANGES} ranges", ErrorCode.BAD_FRAME)
        head = _ACK.pack(self.seq, self.status, self.window_end, len(self.missing))
        return head + b"".join(_RANGE.pack(first, count) for first, count in self.missing)

    @classmethod
    def decode(cls, payload: bytes) -> Ack:
        if len(payload) < _ACK.size:
            raise FrameError(f"an ack of {len(payload)} bytes", ErrorCode.BAD_FRAME)
        seq, status, window_end, count = _ACK.unpack_from(payload)
        if len(payload) != _ACK.size + count * _RANGE.size or count > MAX_RANGES:
            raise FrameError(f"an ack of {len(payload)} bytes naming {count} ranges", ErrorCode.BAD_FRAME)
        try:
            kind = AckStatus(status)
        except ValueError:
            raise FrameError(f"ack status {status}", ErrorCode.BAD_FRAME) from None
        ranges = tuple(_RANGE.unpack_from(payload, _ACK.size + i * _RANGE.size) for i in range(count))
        return cls(seq, kind, window_end, ranges)


def as_ranges(indices: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """Sorted chunk indices as (first, count) runs: [3, 4, 5, 9] -> ((3, 3), (9, 1))."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1][1] += 1
        else:
            runs.append([index, 1])
    return tuple((first, count) for first, count in runs)


def wanted(missing: Iterable[tuple[int, int]], low: int, high: int, limit: int) -> list[int]:
    """The chunk indices `missing` names within [low, high), each once, in order, at most `limit` of them."""
    out: list[int] = []
    for first, count in sorted(missing):
        start = max(first, low, out[-1] + 1 if out else 0)
        stop = min(first + count, high, start + limit - len(out))
        out.extend(range(start, stop))
        if len(out) >= limit:
            break
    return out


class Sender:
    """Sends one message at a time within the receiver's window; `on_ack` gives what to send next:
    the chunks the ack names as missing, then new chunks up to its window end."""

    def __init__(self, att_payload: int, *, window: int = DEFAULT_WINDOW) -> None:
        if window < 2:
            raise ConfigError(f"a window of at least 2 chunks, not {window}")
        self.att_payload, self.window = att_payload, window
        self.seq = -1
        self.sent = self.retransmitted = 0
        self.done = True
        self._frames: list[bytes] = []
        self._next = 0
        self._received_below = 0  # every chunk below it has arrived: an earlier ack named none of them missing
        self._acked = False  # an ack for this message came: the receiver has its header (chunk 0)

    def send(self, type: MessageType, payload: bytes) -> list[bytes]:
        """The first frames of a new message (at most one window)."""
        self.seq = (self.seq + 1) & 0xFFFF
        self._frames = encode(type, self.seq, payload, self.att_payload)
        self._next = min(self.window, len(self._frames))
        self._received_below = 0
        self._acked = False
        self.done = False
        self.sent += self._next
        return self._frames[: self._next]

    def on_ack(self, ack: Ack) -> list[bytes]:
        if ack.seq != self.seq or self.done:
            return []  # about an earlier message
        if ack.status is AckStatus.REFUSED:
            self.done = True
            raise FrameError(f"message {ack.seq} arrived corrupted: send it again", ErrorCode.BAD_CRC)
        if ack.status is AckStatus.COMPLETE:
            self.done = True
            return []
        self._acked = True
        named = [first for first, _count in ack.missing if first < self._next]  # a chunk never sent: not a gap
        if named:
            self._received_below = max(self._received_below, min(named))
        again = [self._frames[i] for i in wanted(ack.missing, self._received_below, self._next, self.window)]
        end = min(max(ack.window_end, self._next), len(self._frames), self._next + self.window)
        fresh = self._frames[self._next : end]
        self._next = end
        self.sent += len(again) + len(fresh)
        self.retransmitted += len(again)
        return again + fresh

    def stalled(self) -> list[bytes]:
        """No ack for a while: the last frame sent again, which makes the receiver ack; and chunk 0
        before it while no ack has come, since a receiver that lost the header cannot ack at all."""
        if self.done or not self._next:
            return []
        probe = [self._frames[self._next - 1]]
        if not self._acked and self._next > 1:
            probe.insert(0, self._frames[0])
        self.sent += len(probe)
        self.retransmitted += len(probe)
        return probe


class Receiver:
    """A `Reassembler` that acks: every `window // 2` new chunks, on a chunk it already has (the
    sender's stall probe), on completion, and with `REFUSED` on a CRC mismatch."""

    def __init__(
        self, att_payload: int, *, window: int = DEFAULT_WINDOW, max_message: int = DEFAULT_MAX_MESSAGE
    ) -> None:
        self.reassembler = Reassembler(att_payload, max_message=max_message)
        self.window = window
        self.acks = 0
        self._since_ack = 0

    def feed(self, frame: bytes, now: float) -> tuple[Message | None, Ack | None]:
        """The message when complete, and the ack to send back now, if any."""
        reassembler = self.reassembler
        taken = reassembler.taken
        try:
            message = reassembler.feed(frame, now)
        except FrameError as error:
            if error.code is ErrorCode.BAD_CRC and reassembler.refused is not None:
                return None, self._sent(Ack(reassembler.refused, AckStatus.REFUSED, 0))
            raise
        if message is not None:
            return message, self._sent(Ack(message.seq, AckStatus.COMPLETE, 0))
        if reassembler.taken == taken:  # a duplicate: the sender is probing, or missed our last ack
            if reassembler.progress() is None and reassembler.completed is not None:
                return None, self._sent(Ack(reassembler.completed, AckStatus.COMPLETE, 0))
            return None, self.ack()
        self._since_ack += 1
        return None, self.ack() if self._since_ack >= self.window // 2 else None

    def ack(self) -> Ack | None:
        """Where the message in progress stands (None while its header is unknown)."""
        progress = self.reassembler.progress()
        if progress is None:
            return None
        seq, count, highest = progress
        missing = self.reassembler.missing()
        lowest = missing[0] if missing else count
        gaps = as_ranges(i for i in missing if i < highest)[:MAX_RANGES]
        return self._sent(Ack(seq, AckStatus.RECEIVING, min(lowest + self.window, count), gaps))

    def _sent(self, ack: Ack) -> Ack:
        self._since_ack = 0
        self.acks += 1
        return ack
