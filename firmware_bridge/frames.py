"""The frame protocol that carries messages over BLE GATT: messages cut into frames of one ATT
payload each (the negotiated MTU minus 3), and put together again.

Byte-exact layout, all integers little-endian (docs/ble.md has the spec and test vectors):

- Every frame starts with a 2-byte header: bits 0 to 12 the chunk index (0 to 8191), bits 13 to 15
  the message sequence number modulo 8.
- Chunk 0 then carries the 12-byte message header: version (u8, 1), message type (u8), sequence
  number (u16), payload length (u32), CRC-32 of the payload (u32, IEEE 802.3, as `zlib.crc32`).
- The payload follows, cut so that every frame but the last is exactly one ATT payload long:
  chunk 0 holds `att_payload - 14` bytes, every other chunk `att_payload - 2`.

Two bytes per frame and twelve per message: a 100 KB photo at ATT MTU 247 takes 424 frames where
420 is the least any framing could take (0.9906). A chunk index on every frame lets the receiver
ask again for exactly the chunks it lacks (`Reassembler.missing`); the CRC and the length catch
what the link layer let through.
"""

from __future__ import annotations

import contextlib
import math
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

from device_sdk.protocol.errors import ErrorCode, FrameError

PROTOCOL_VERSION = 1
FRAME_HEADER = 2
MESSAGE_HEADER = 12
MAX_CHUNKS = 1 << 13
MIN_ATT_PAYLOAD = 20  # ATT MTU 23, the least BLE allows
MAX_ATT_PAYLOAD = 514  # ATT MTU 517
DEFAULT_MAX_MESSAGE = 1 << 20

_FRAME = struct.Struct("<H")
_MESSAGE = struct.Struct("<BBHII")


class MessageType(IntEnum):
    """What a message holds; the GATT characteristic it travels on is in docs/ble.md."""

    CONTROL = 1
    EVENT = 2
    AUDIO = 3
    IMAGE = 4
    DISPLAY = 5
    ACK = 6


@dataclass(frozen=True)
class Message:
    type: MessageType
    seq: int
    payload: bytes


def chunk_sizes(att_payload: int) -> tuple[int, int]:
    """Payload bytes in chunk 0 and in every other chunk, for one ATT payload size."""
    if not MIN_ATT_PAYLOAD <= att_payload <= MAX_ATT_PAYLOAD:
        raise FrameError(
            f"an ATT payload is {MIN_ATT_PAYLOAD} to {MAX_ATT_PAYLOAD} bytes, not {att_payload}", ErrorCode.BAD_FRAME
        )
    return att_payload - FRAME_HEADER - MESSAGE_HEADER, att_payload - FRAME_HEADER


def chunk_count(length: int, att_payload: int) -> int:
    first, rest = chunk_sizes(att_payload)
    return 1 + math.ceil(max(0, length - first) / rest)


def encode(
    type: MessageType, seq: int, payload: bytes, att_payload: int, *, max_message: int = DEFAULT_MAX_MESSAGE
) -> list[bytes]:
    """The frames of one message, in order."""
    if not 0 <= seq <= 0xFFFF:
        raise FrameError(f"a sequence number is 0 to 65535, not {seq}", ErrorCode.BAD_FRAME)
    first, rest = chunk_sizes(att_payload)
    count = chunk_count(len(payload), att_payload)
    if len(payload) > max_message or count > MAX_CHUNKS:
        raise FrameError(f"a message of {len(payload)} bytes is over the limit", ErrorCode.TOO_LARGE)
    high = (seq & 7) << 13
    view = memoryview(payload)
    frames = [
        _FRAME.pack(high)
        + _MESSAGE.pack(PROTOCOL_VERSION, type, seq, len(payload), zlib.crc32(payload))
        + view[:first].tobytes()
    ]
    pack = _FRAME.pack
    frames.extend(pack(high | i) + view[first + (i - 1) * rest : first + i * rest] for i in range(1, count))
    return frames


@dataclass(slots=True)
class _Partial:
    seq: int  # its low 3 bits until chunk 0 gives the whole number
    started: float
    low: int
    count: int = 0  # chunks in the message; 0 until chunk 0 has come
    type: MessageType = MessageType.CONTROL
    length: int = 0
    crc: int = 0
    buffer: bytearray = field(default_factory=bytearray)
    early: dict[int, bytes] = field(default_factory=dict)  # chunks that came before chunk 0
    have: set[int] = field(default_factory=set)


class Reassembler:
    """Puts the frames of one direction of one characteristic together, one message at a time.

    Duplicates are ignored, chunks may come in any order, and `missing()` names the chunks still
    lacking, for a selective retransmit. A frame of another sequence number starts a new message
    and drops the unfinished one (`dropped` counts them); so does `expire` after `timeout_s`. At
    most `max_message` bytes are held for a message; anything malformed raises `FrameError` and
    leaves the message in progress as it was.
    """

    def __init__(self, att_payload: int, *, max_message: int = DEFAULT_MAX_MESSAGE, timeout_s: float = 5.0) -> None:
        self.first, self.rest = chunk_sizes(att_payload)
        self.att_payload = att_payload
        self.max_message = max_message
        self.timeout_s = timeout_s
        self.dropped = 0
        self.taken = 0
        """New chunks stored so far (duplicates are not): a caller tells a duplicate by it."""
        self.refused: int | None = None
        """The sequence number of the last message dropped for a CRC mismatch."""
        self._partial: _Partial | None = None
        self._done: int | None = None  # the sequence number completed last: its late duplicates are dropped

    def feed(self, frame: bytes, now: float) -> Message | None:
        """Take one frame; the message when it is complete and its CRC matches."""
        size = len(frame)
        if size < FRAME_HEADER or size > self.att_payload:
            raise FrameError(f"a frame of {size} bytes", ErrorCode.BAD_FRAME)
        word = frame[0] | frame[1] << 8
        index = word & 0x1FFF
        current = self._partial
        if index and current is not None and current.count and current.low == word >> 13:  # the common case
            have = current.have
            if index in have:
                return None
            start, end = self._span(current, index, size - FRAME_HEADER)
            current.buffer[start:end] = frame[FRAME_HEADER:]
            have.add(index)
            self.taken += 1
            return self._finish(current) if len(have) == current.count else None
        low = word >> 13
        done = self._done
        if (
            current is None
            and done is not None
            and low == done & 7
            and (index or frame[4:6] == done.to_bytes(2, "little"))
        ):
            return None  # a late duplicate of the message just completed
        fresh = current is None or current.low != low
        partial = _Partial(low, now, low) if fresh else current
        assert partial is not None
        if index in partial.have or index in partial.early:
            return None  # a duplicate
        if index:  # before chunk 0 (with chunk 0 known, the common case above took it)
            if (len(partial.early) + 1) * self.rest > self.max_message:
                raise FrameError("chunks of a message over the limit", ErrorCode.TOO_LARGE)
            partial.early[index] = bytes(frame[FRAME_HEADER:])
        else:
            self._start(partial, frame)
        self.taken += 1
        if fresh:  # the frame was good: it starts a new message, and an unfinished one is lost
            self.dropped += current is not None
            self._partial = partial
        return self._finish(partial) if partial.count else None

    def _start(self, partial: _Partial, frame: bytes) -> None:
        if len(frame) < FRAME_HEADER + MESSAGE_HEADER:
            raise FrameError("chunk 0 is shorter than the message header", ErrorCode.BAD_FRAME)
        version, kind, seq, length, crc = _MESSAGE.unpack_from(frame, FRAME_HEADER)
        if version != PROTOCOL_VERSION:
            raise FrameError(f"frame protocol version {version}", ErrorCode.UNSUPPORTED_VERSION)
        if seq & 7 != partial.low:
            raise FrameError("the message header's sequence number disagrees with the frame's", ErrorCode.BAD_FRAME)
        try:
            message_type = MessageType(kind)
        except ValueError:
            raise FrameError(f"message type {kind}", ErrorCode.UNKNOWN_TYPE) from None
        if length > self.max_message or chunk_count(length, self.att_payload) > MAX_CHUNKS:
            raise FrameError(f"a message of {length} bytes is over the limit", ErrorCode.TOO_LARGE)
        body = frame[FRAME_HEADER + MESSAGE_HEADER :]
        if len(body) != min(length, self.first):
            raise FrameError(f"chunk 0 holds {len(body)} payload bytes", ErrorCode.BAD_FRAME)
        partial.seq, partial.type, partial.length, partial.crc = seq, message_type, length, crc
        partial.count = chunk_count(length, self.att_payload)
        partial.buffer = bytearray(length)
        partial.buffer[: len(body)] = body
        partial.have.add(0)
        early, partial.early = partial.early, {}
        for index, data in sorted(early.items()):
            with contextlib.suppress(FrameError):  # one that does not fit is dropped: missing() asks again
                start, end = self._span(partial, index, len(data))
                partial.buffer[start:end] = data
                partial.have.add(index)

    def _span(self, partial: _Partial, index: int, size: int) -> tuple[int, int]:
        """Where chunk `index`, `size` bytes long, goes in the payload; `FrameError` if it does not fit."""
        start = self.first + (index - 1) * self.rest
        end, full = start + size, start + self.rest
        if index >= partial.count or end != (full if full < partial.length else partial.length):
            raise FrameError(f"chunk {index} does not fit a message of {partial.length} bytes", ErrorCode.BAD_FRAME)
        return start, end

    def _finish(self, partial: _Partial) -> Message | None:
        if len(partial.have) < partial.count:
            return None
        self._partial, self._done = None, partial.seq
        payload = bytes(partial.buffer)
        if zlib.crc32(payload) != partial.crc:
            self.refused = partial.seq
            raise FrameError(f"message {partial.seq}: CRC mismatch", ErrorCode.BAD_CRC)
        return Message(partial.type, partial.seq, payload)

    @property
    def completed(self) -> int | None:
        """The sequence number of the message completed last."""
        return self._done

    def progress(self) -> tuple[int, int, int] | None:
        """The message in progress as (sequence number, chunk count, highest chunk held), or None
        when there is none or its header has not come."""
        partial = self._partial
        if partial is None or not partial.count:
            return None
        return partial.seq, partial.count, max(partial.have)

    def missing(self) -> list[int]:
        """Chunk indices the message in progress still lacks ([0] while its header is unknown)."""
        partial = self._partial
        if partial is None:
            return []
        if not partial.count:
            return [0]
        return [i for i in range(partial.count) if i not in partial.have]

    def expire(self, now: float) -> bool:
        """Drop a message unfinished after `timeout_s`; True if one was dropped."""
        if self._partial is not None and now - self._partial.started > self.timeout_s:
            self._partial = None
            self.dropped += 1
            return True
        return False
