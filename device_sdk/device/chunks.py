"""Audio chunks given as a list or as an async stream, read the same way."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable


async def each_chunk(chunks: AsyncIterable[bytes] | Iterable[bytes]) -> AsyncIterator[bytes]:
    """Each chunk of `chunks`, whether they come as an iterable or an async iterable."""
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk
