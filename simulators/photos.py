"""Product photos for the simulated glasses' camera, and the tag that stands in for vision.

`product_photo` draws a picture of a catalog product with Pillow (a textured scene, the pack, its
name: a JPEG of tens of KB, like a real camera frame) and saves it with the EXIF a phone camera
writes, GPS position included, so the gateway's stripping has something to strip.

The stand-in for real vision, plainly: the bottom of every picture carries a strip of black and
white 8x8 blocks that spell the product's SKU (`read_tag`). The reference agent reads that strip;
a real agent runs a vision model on the pixels instead. The blocks sit on JPEG's own 8x8 grid, so
they survive compression, and they are pixels, so they survive metadata stripping.
"""

from __future__ import annotations

import io
import random

from PIL import ExifTags, Image, ImageDraw, ImageFilter

from device_sdk.protocol.errors import ErrorCode, ProtocolError

CELL = 8
_START = (1, 0, 1, 1, 0, 0, 1, 0)
MAX_TAG = 60


def _bits(data: bytes) -> list[int]:
    return [(byte >> (7 - i)) & 1 for byte in data for i in range(8)]


def tag_bits(text: str) -> list[int]:
    """Start pattern, length byte, the ASCII text, a checksum byte (sum of the text's bytes mod 256)."""
    data = text.encode("ascii")
    if not 0 < len(data) <= MAX_TAG:
        raise ValueError(f"a tag of 1 to {MAX_TAG} ASCII characters, not {text!r}")
    return [*_START, *_bits(bytes([len(data)]) + data + bytes([sum(data) & 0xFF]))]


def draw_tag(image: Image.Image, text: str) -> None:
    """Blocks along the bottom rows of `image`, left to right, row by row."""
    per_row = image.width // CELL
    bits = tag_bits(text)
    rows = -(-len(bits) // per_row)
    top = image.height - rows * CELL
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, top, image.width, image.height), fill="white")
    for i, bit in enumerate(bits):
        if bit:
            x, y = (i % per_row) * CELL, top + (i // per_row) * CELL
            draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill="black")


def read_tag(jpeg: bytes) -> str | None:
    """The text in a picture's tag strip, or None if it carries no readable tag."""
    try:
        image = Image.open(io.BytesIO(jpeg)).convert("L")
    except (OSError, ValueError) as exc:
        raise ProtocolError(f"not an image: {exc}", ErrorCode.BAD_IMAGE) from None
    per_row, rows = image.width // CELL, image.height // CELL
    height = image.height - image.height % CELL
    for tag_rows in range(1, min(rows, 8) + 1):
        top = height - tag_rows * CELL
        bits = [
            int(image.getpixel((x * CELL + CELL // 2, top + y * CELL + CELL // 2)) < 128)  # type: ignore[operator]
            for y in range(tag_rows)
            for x in range(per_row)
        ]
        if tuple(bits[:8]) != _START:
            continue
        data = bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(8, len(bits) - 7, 8))
        length = data[0] if data else 0
        if 0 < length <= MAX_TAG and len(data) >= length + 2:
            body = data[1 : 1 + length]
            if sum(body) & 0xFF == data[1 + length] and body.isascii():
                return body.decode()
    return None


def product_photo(
    sku: str, name: str, *, size: tuple[int, int] = (640, 480), quality: int = 85, seed: int = 0
) -> bytes:
    """A JPEG of `name` on a shelf, tagged with `sku`, with camera EXIF and a GPS position."""
    rng = random.Random(f"{sku}/{seed}")
    width, height = size
    image = Image.new("RGB", size)
    pixels = [
        (rng.randrange(90, 140) + x // 16, rng.randrange(80, 120) + y // 12, rng.randrange(60, 100))
        for y in range(height)
        for x in range(width)
    ]
    image.putdata(pixels)
    image = image.filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(image)
    hue = rng.randrange(0, 255)
    box = (width // 5, height // 6, width * 4 // 5, height * 3 // 4)
    draw.rounded_rectangle(box, radius=18, fill=(hue, 255 - hue // 2, 90 + hue // 3), outline="black", width=4)
    draw.text((box[0] + 24, box[1] + 24), name[:40], fill="black", font_size=28)
    draw.text((box[0] + 24, box[1] + 70), sku, fill="black", font_size=22)
    draw_tag(image, sku)
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SimGlass"
    exif[ExifTags.Base.Model] = "Lens-01"
    exif[ExifTags.Base.BodySerialNumber] = "SN-0042-7781"
    exif[ExifTags.Base.DateTime] = "2026:11:26 09:30:00"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (31.0, 13.0, 48.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (121.0, 28.0, 12.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, exif=exif, comment=b"taken by SimGlass SN-0042-7781")
    return out.getvalue()
