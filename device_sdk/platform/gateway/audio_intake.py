"""Audio intake: the audio streams of the devices a gateway serves, from `audio.start` through the
binary chunks to `audio.stop`, handed to whoever listens as each stream opens."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from device_sdk.media.audio import AudioStream, decode_chunk
from device_sdk.protocol.errors import ErrorCode, SessionError
from device_sdk.protocol.messages import AudioStart, AudioStop

MAX_STREAMS = 64
"""Open streams over all devices; a new one beyond this (or beyond `per_device` of one device) ends the oldest."""


class AudioIntake:
    """Opens, feeds and ends the streams devices announce; keeps their audio only while someone listens.

    Each device's audio waiting for a listener is bounded: at most `per_device` open streams, each
    keeping `queue_chunks` chunks, the oldest dropped first (counted in the stream's `dropped`)."""

    def __init__(self, per_device: int = 4, queue_chunks: int = 100) -> None:
        self.per_device = per_device
        self.queue_chunks = queue_chunks
        self._streams: dict[tuple[str, int], AudioStream] = {}
        self._new_streams: asyncio.Queue[AudioStream] = asyncio.Queue(8)
        self._listeners = 0
        self._quiet_streams: dict[str, deque[int]] = {}

    def streams(self) -> AsyncIterator[AudioStream]:
        """Every stream opened while this iterates, as it opens (a slow listener loses the oldest)."""

        async def iterate() -> AsyncIterator[AudioStream]:
            self._listeners += 1
            try:
                while True:
                    yield await self._new_streams.get()
            finally:
                self._listeners -= 1

        return iterate()

    def control(self, device_id: str, message: AudioStart | AudioStop) -> None:
        """Open or end a stream; ending one that is neither open nor just ended raises `unknown_stream`."""
        key = (device_id, message.stream)
        if isinstance(message, AudioStop):
            stream = self._streams.pop(key, None)
            if stream is not None:
                stream.end(message.samples)
                self._quiet(device_id, message.stream)
            elif message.stream not in self._quiet_streams.get(device_id, ()):
                raise SessionError(f"no audio stream {message.stream}", ErrorCode.UNKNOWN_STREAM)
            return
        if key in self._streams:
            self._streams.pop(key).end()
        while len(self._streams) >= MAX_STREAMS or sum(k[0] == device_id for k in self._streams) >= self.per_device:
            oldest = next(k for k in self._streams if len(self._streams) >= MAX_STREAMS or k[0] == device_id)
            self._streams.pop(oldest).end()
        keep = self._listeners > 0
        stream = AudioStream(
            device_id, message.session_id, message.stream, message.format, keep=keep, maxsize=self.queue_chunks
        )
        self._streams[key] = stream
        if keep:
            if self._new_streams.full():
                self._new_streams.get_nowait().end()
            self._new_streams.put_nowait(stream)

    def chunk(self, device_id: str, payload: bytes) -> None:
        """Feed one binary chunk to its stream. Raises `ProtocolError` for a malformed chunk, and
        `unknown_stream` once per stream that is not open: one error per stream, not one per chunk."""
        chunk = decode_chunk(payload)
        stream = self._streams.get((device_id, chunk.stream))
        if stream is None:
            if chunk.stream not in self._quiet_streams.get(device_id, ()):
                self._quiet(device_id, chunk.stream)
                raise SessionError(f"no audio stream {chunk.stream}", ErrorCode.UNKNOWN_STREAM)
            return
        stream.feed(chunk)
        if stream.ended:
            self._streams.pop((device_id, chunk.stream), None)
            self._quiet(device_id, chunk.stream)

    def forget(self, serves: Callable[[str], bool]) -> None:
        """Drop the ended-stream memory of every device that `serves` says this gateway no longer serves."""
        for device_id in list(self._quiet_streams):
            if not serves(device_id):
                del self._quiet_streams[device_id]

    def _quiet(self, device_id: str, stream: int) -> None:
        """Remember an ended stream: its late chunks (QoS 0 overtakes QoS 1) are dropped without an error."""
        self._quiet_streams.setdefault(device_id, deque(maxlen=16)).append(stream)
