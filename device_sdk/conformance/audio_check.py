"""The audio framing a conformance run checks: `audio.start` at QoS 1, then chunks of the stream's
tag, `seq` from 0 and contiguous sample offsets, then `audio.stop` with the samples sent."""

from __future__ import annotations

import asyncio

from device_sdk.media.audio import decode_chunk
from device_sdk.protocol.errors import ProtocolError
from device_sdk.protocol.messages import AudioStart, AudioStop

from .observer import Observer

LATE = 0.3
"""How long chunks may trail `audio.stop` (QoS 0 and QoS 1 messages may overtake each other)."""


async def audio_problems(obs: Observer, since: float, wait: float) -> tuple[list[str], str]:
    """What is wrong with the first stream the device opened since `since` (empty: nothing), and the evidence."""
    start = await obs.wait(lambda s: isinstance(s.message, AudioStart), wait, since)
    if start is None:
        return [f"no audio.start within {wait:g} s of the control"], ""
    opened: AudioStart = start.message
    stop = await obs.wait(
        lambda s: isinstance(s.message, AudioStop) and s.message.stream == opened.stream,
        max(wait - (obs.now() - since), 0.0),
        start.at,
    )
    if stop is None:
        return [f"stream {opened.stream} opened, no audio.stop for it"], ""
    await asyncio.sleep(LATE)
    problems: list[str] = []
    if start.qos < 1:
        problems.append("audio.start came at QoS 0")
    chunks = []
    for seen in obs.find(lambda s: s.leaf == "audio", start.at):
        try:
            chunk = decode_chunk(seen.raw, opened.format.width)
        except ProtocolError as exc:
            problems.append(f"a chunk that does not parse: {exc.text}")
            continue
        if chunk.stream == opened.stream:
            chunks.append(chunk)
    if not chunks:
        return [*problems, f"no chunk of stream {opened.stream}"], ""
    chunks.sort(key=lambda c: c.seq)
    offset = 0
    for expected_seq, chunk in enumerate(chunks):
        if chunk.seq != expected_seq:
            problems.append(f"chunk seq {chunk.seq} where {expected_seq} was due")
            break
        if chunk.offset != offset:
            problems.append(f"chunk {chunk.seq} at offset {chunk.offset}, the samples before it end at {offset}")
            break
        offset += chunk.samples(opened.format.width)
    sent: AudioStop = stop.message
    if not problems and sent.samples != offset:
        problems.append(f"audio.stop says {sent.samples} samples, the chunks hold {offset}")
    ms = 1000 * offset / opened.format.rate
    return (
        problems,
        f"stream {opened.stream}: {len(chunks)} chunks, {offset} samples ({ms:.0f} ms), stop says {sent.samples}",
    )
