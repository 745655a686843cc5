"""Audio on the bus: the binary chunk that carries PCM at QoS 0, and the stream a gateway reads.

A device sends `audio.start` (the format, once) on its up topic, waits for the broker's PUBACK,
then publishes chunks on its audio topic, then `audio.stop`. Each chunk is a 16-byte header and
the PCM; timestamps count samples from the start of the stream, so a file and a live microphone
look the same and a lost chunk (QoS 0) shows as a gap, not as a shift in time.

    offset  size  field
    0       1     version, 1
    1       1     flags: bit 0 set on the last chunk of the stream
    2       2     stream tag (u16, little endian), from audio.start
    4       4     sequence number (u32 LE), 0 for the first chunk
    8       8     offset of the first sample, in samples since the stream start (u64 LE)
    16      n     PCM, n a multiple of the sample width (2 bytes, s16le mono)
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from device_sdk.bounded import DropOldest
from device_sdk.protocol.errors import ErrorCode, ProtocolError
from device_sdk.protocol.messages import AudioFormat

CHUNK_VERSION = 1
HEADER = struct.Struct("<BBHIQ")
MAX_CHUNK = 64 * 1024
"""Largest chunk in bytes, header included (about 2 s of 16 kHz audio)."""
LAST = 0x01
MAX_GAP_SECONDS = 60
"""The most audio a stream takes as lost between two chunks; a chunk that claims a wider gap is refused."""
MAX_SEQ_GAP = 6000
"""The most chunks a stream takes as lost between two (a minute of 10 ms chunks)."""


@dataclass(frozen=True)
class AudioChunk:
    stream: int
    seq: int
    offset: int
    pcm: bytes
    last: bool = False

    def samples(self, width: int = 2) -> int:
        return len(self.pcm) // width

    def encode(self) -> bytes:
        return HEADER.pack(CHUNK_VERSION, LAST if self.last else 0, self.stream, self.seq, self.offset) + self.pcm


def decode_chunk(data: bytes, width: int = 2) -> AudioChunk:
    """Parse one chunk, or raise `ProtocolError(bad_audio)` (or `too_large`)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"an audio chunk is bytes, not {type(data).__name__}", ErrorCode.BAD_AUDIO)
    if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 4:
        raise ProtocolError(f"a sample is 1 to 4 bytes wide, not {width!r}", ErrorCode.BAD_AUDIO)
    if len(data) > MAX_CHUNK:
        raise ProtocolError(f"audio chunk of {len(data)} bytes exceeds {MAX_CHUNK}", ErrorCode.TOO_LARGE)
    if len(data) < HEADER.size:
        raise ProtocolError(f"audio chunk of {len(data)} bytes is shorter than its header", ErrorCode.BAD_AUDIO)
    version, flags, stream, seq, offset = HEADER.unpack_from(data)
    if version != CHUNK_VERSION:
        raise ProtocolError(f"audio chunk version {version} (this side speaks 1)", ErrorCode.BAD_AUDIO)
    if flags & ~LAST:
        raise ProtocolError(f"unknown audio chunk flags {flags:#04x}", ErrorCode.BAD_AUDIO)
    pcm = bytes(data[HEADER.size :])
    if len(pcm) % width:
        raise ProtocolError(f"{len(pcm)} PCM bytes is not a whole number of samples", ErrorCode.BAD_AUDIO)
    return AudioChunk(stream, seq, offset, pcm, bool(flags & LAST))


class AudioStream:
    """One device's audio for one session, as the gateway receives it: an async iterator of chunks.

    Chunks arrive in order or not at all (QoS 0); `lost_samples` counts the gaps. A chunk that
    would open a gap wider than `MAX_GAP_SECONDS` or `MAX_SEQ_GAP` chunks is refused
    (`ProtocolError(bad_audio)`) and leaves the stream as it was, for the honest chunks after it. Iteration ends
    at `audio.stop` or the last chunk. The queue is bounded: a consumer that falls `maxsize`
    chunks behind loses the oldest, counted in `dropped`. With `keep=False` (nobody listens)
    chunks are only counted.
    """

    def __init__(
        self, device_id: str, session_id: str, stream: int, fmt: AudioFormat, *, keep: bool = True, maxsize: int = 100
    ) -> None:
        self.device_id = device_id
        self.session_id = session_id
        self.stream = stream
        self.format = fmt
        self.received_samples = 0
        self.lost_samples = 0
        self.sent_samples: int | None = None
        self.ended = False
        self._keep = keep
        self._next_offset = 0
        self._next_seq = 0
        self._queue: DropOldest[AudioChunk] = DropOldest(maxsize)

    @property
    def dropped(self) -> int:
        """Chunks the consumer was too slow to take."""
        return self._queue.dropped

    def feed(self, chunk: AudioChunk) -> None:
        if self.ended:
            return
        if chunk.offset < self._next_offset or chunk.seq < self._next_seq:
            return  # a duplicate or a late chunk: time only moves forward
        gap = chunk.offset - self._next_offset
        if gap > MAX_GAP_SECONDS * self.format.rate or chunk.seq - self._next_seq > MAX_SEQ_GAP:
            raise ProtocolError(
                f"audio chunk {chunk.seq} at sample {chunk.offset} is too far past sample {self._next_offset}"
                f" (chunk {self._next_seq}): refused, the stream goes on",
                ErrorCode.BAD_AUDIO,
            )
        self.lost_samples += chunk.offset - self._next_offset
        self._next_offset = chunk.offset + chunk.samples(self.format.width)
        self._next_seq = chunk.seq + 1
        self.received_samples += chunk.samples(self.format.width)
        if self._keep:
            self._queue.put(chunk)
        if chunk.last:
            self.end()

    def end(self, sent_samples: int | None = None) -> None:
        if sent_samples is not None:
            self.sent_samples = sent_samples
            self.lost_samples += min(max(0, sent_samples - self._next_offset), MAX_GAP_SECONDS * self.format.rate)
        if not self.ended:
            self.ended = True
            self._queue.close()

    def __aiter__(self) -> AsyncIterator[AudioChunk]:
        return self

    async def __anext__(self) -> AudioChunk:
        return await self._queue.__anext__()
