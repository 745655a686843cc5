"""Camera images on their way to the agent: metadata stripped, named by their hash, kept for a while.

A device strips every metadata segment from a JPEG before it leaves the gateway (`strip_metadata`:
EXIF with its GPS position, camera serial and time, XMP, IPTC, ICC profiles, comments, wherever
they stand, and every picture after the primary one: the second images of multi-picture / Ultra
HDR files carry their own EXIF), publishes the clean bytes on its `image` topic and sends the agent
request with `image_ref="sha256:<hex>"`. The agent side keeps recent images in an `ImageStore` and
looks them up by that reference. Stripping rebuilds the primary picture from its decoding segments
(`device_sdk.media.jpeg`), so an upright picture is not re-encoded: its pixels stay bit for bit. A
picture whose EXIF says it is stored rotated or mirrored is turned upright first (decoded and
re-encoded with Pillow), since the EXIF that said so is gone after. Other formats (PNG with its
text chunks, WebP, HEIC/AVIF, GIF, TIFF) are refused by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections import OrderedDict

from PIL import Image

from device_sdk.protocol.errors import ErrorCode, ProtocolError

from . import jpeg as jpeg_segments

MAX_IMAGE = 1 << 20
MAX_PIXELS = 40_000_000
"""Largest picture decoded to turn it upright (a 1 MiB JPEG that claims more is refused, not decoded)."""
_QUALITIES = (92, 80, 65)
"""JPEG qualities tried, in turn, for an upright picture that must fit in `max_size`."""
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""What turns a picture of each EXIF orientation upright (as `PIL.ImageOps.exif_transpose` does)."""
_OTHER_FORMATS = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG (its text chunks are not stripped here)"),
    (0, b"GIF8", "a GIF"),
    (8, b"WEBP", "a WebP"),
    (0, b"II*\0", "a TIFF"),
    (0, b"MM\0*", "a TIFF"),
    (4, b"ftyp", "a HEIC/AVIF (ISO media) file"),
)


def image_ref(jpeg: bytes) -> str:
    return "sha256:" + hashlib.sha256(jpeg).hexdigest()


def _bad(text: str) -> ProtocolError:
    return ProtocolError(f"not a JPEG this SDK takes: {text}", ErrorCode.BAD_IMAGE)


def strip_metadata(jpeg: bytes, *, max_size: int = MAX_IMAGE) -> bytes:
    """The primary picture of `jpeg`, upright, without EXIF (and its GPS block), XMP, IPTC, ICC,
    maker notes, comments or later pictures; only the segments a decoder needs are kept.
    `ProtocolError(bad_image)` for anything that is not a whole JPEG (other image formats are
    named), `too_large` over `max_size` bytes."""
    if not isinstance(jpeg, (bytes, bytearray)):
        raise _bad(f"an image is bytes, not {type(jpeg).__name__}")
    if len(jpeg) > max_size:
        raise ProtocolError(f"an image of {len(jpeg)} bytes (at most {max_size})", ErrorCode.TOO_LARGE)
    data = bytes(jpeg)
    for offset, magic, name in _OTHER_FORMATS:
        if data[offset : offset + len(magic)] == magic:
            raise _bad(f"{name}; send the picture as a JPEG")
    picture = jpeg_segments.primary(data)
    if picture.orientation == 1:
        return picture.jpeg
    return jpeg_segments.primary(_upright(picture, max_size)).jpeg


def _upright(picture: jpeg_segments.Primary, max_size: int) -> bytes:
    """`picture` decoded, turned upright as its EXIF orientation said, and encoded again."""
    if picture.width * picture.height > MAX_PIXELS:
        raise _bad(f"a {picture.width}x{picture.height} picture to turn upright (at most {MAX_PIXELS} pixels)")
    try:
        with Image.open(io.BytesIO(picture.jpeg), formats=["JPEG"]) as stored:
            upright = stored.transpose(_TRANSPOSE[picture.orientation])
    except Exception as exc:  # Pillow's errors for a picture it cannot decode are of many kinds
        raise _bad(f"the picture does not decode: {type(exc).__name__}") from None
    for quality in _QUALITIES:
        out = io.BytesIO()
        upright.save(out, "JPEG", quality=quality)
        if out.tell() <= max_size:
            return out.getvalue()
    raise ProtocolError(f"the upright picture is over {max_size} bytes", ErrorCode.TOO_LARGE)


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
