"""Camera images on their way to the agent: metadata stripped, named by their hash, kept for a while.

A device strips every metadata segment from a JPEG before it leaves the gateway (`strip_metadata`:
EXIF with its GPS position, camera serial and time, XMP, IPTC, comments), publishes the clean
bytes on its `image` topic and sends the agent request with `image_ref="sha256:<hex>"`. The agent
side keeps recent images in an `ImageStore` and looks them up by that reference. Stripping works on
the JPEG's segments, so the picture itself is not re-encoded: its pixels stay bit for bit.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict

from device_sdk.protocol.errors import ErrorCode, ProtocolError

MAX_IMAGE = 1 << 20
_KEEP_APP = {0xE0: (b"JFIF\0", b"JFXX\0"), 0xE2: (b"ICC_PROFILE\0",), 0xEE: (b"Adobe",)}
"""APPn segments that describe how to decode the picture, not where or by whom it was taken."""
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length


def image_ref(jpeg: bytes) -> str:
    return "sha256:" + hashlib.sha256(jpeg).hexdigest()


def _bad(text: str) -> ProtocolError:
    return ProtocolError(f"not a JPEG this SDK takes: {text}", ErrorCode.BAD_IMAGE)


def strip_metadata(jpeg: bytes, *, max_size: int = MAX_IMAGE) -> bytes:
    """The JPEG without EXIF (and its GPS block), XMP, IPTC, maker notes and comments; only the
    segments a decoder needs are kept. `ProtocolError(bad_image)` for anything that is not a
    whole baseline or progressive JPEG of at most `max_size` bytes."""
    if len(jpeg) > max_size:
        raise ProtocolError(f"an image of {len(jpeg)} bytes (at most {max_size})", ErrorCode.TOO_LARGE)
    if jpeg[:2] != b"\xff\xd8":
        raise _bad("no start-of-image marker")
    out = bytearray(b"\xff\xd8")
    pos = 2
    while True:
        if pos + 2 > len(jpeg) or jpeg[pos] != 0xFF:
            raise _bad(f"no marker at byte {pos}")
        marker = jpeg[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            raise _bad("the image ends before any scan")
        if marker in _STANDALONE:
            out += jpeg[pos : pos + 2]
            pos += 2
            continue
        if pos + 4 > len(jpeg):
            raise _bad("truncated segment header")
        length = int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(jpeg):
            raise _bad(f"a segment of length {length} at byte {pos} runs past the end")
        body = jpeg[pos + 4 : end]
        if marker == 0xDA:  # start of scan: the rest is picture data (and any later scans) up to EOI
            if not jpeg.rstrip(b"\0").endswith(b"\xff\xd9"):
                raise _bad("truncated: no end-of-image marker")
            out += jpeg[pos:]
            return bytes(out)
        if marker in _KEEP_APP:
            keep = body.startswith(_KEEP_APP[marker])
        else:  # every other APPn (EXIF and GPS, XMP, IPTC, maker notes, MPF) and comments go
            keep = marker not in range(0xE0, 0xF0) and marker != 0xFE
        if keep:
            out += jpeg[pos:end]
        pos = end


class ImageStore:
    """The most recent images (at most `max_images`, each at most `max_size` bytes) by reference;
    `wait` covers an image that is still on its way when the request that names it arrives."""

    def __init__(self, *, max_images: int = 32, max_size: int = MAX_IMAGE) -> None:
        self.max_images, self.max_size = max_images, max_size
        self._images: OrderedDict[str, bytes] = OrderedDict()
        self._arrived = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._images)

    async def put(self, jpeg: bytes) -> str:
        """Keep a clean JPEG (metadata is stripped here too: the store never holds any)."""
        clean = strip_metadata(jpeg, max_size=self.max_size)
        ref = image_ref(clean)
        async with self._arrived:
            self._images[ref] = clean
            self._images.move_to_end(ref)
            while len(self._images) > self.max_images:
                self._images.popitem(last=False)
            self._arrived.notify_all()
        return ref

    def get(self, ref: str) -> bytes | None:
        return self._images.get(ref)

    async def wait(self, ref: str, timeout: float) -> bytes | None:
        """The image named `ref`, waiting up to `timeout` seconds for it; None if it never came."""
        async with self._arrived:
            try:
                async with asyncio.timeout(timeout):
                    await self._arrived.wait_for(lambda: ref in self._images)
            except TimeoutError:
                return None
            return self._images[ref]
