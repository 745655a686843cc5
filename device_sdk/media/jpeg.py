"""A JPEG's marker segments walked one by one: the primary image rebuilt from what a decoder needs.

`primary(data)` reads a JPEG from its start-of-image to the end-of-image of the first (primary)
picture, through every scan (a progressive JPEG has many, with tables between them), and
returns that picture with only the segments that decode it: frame and scan headers, Huffman and
quantisation tables, restart interval, the scans' entropy-coded data, and the two APPn segments
that tell a decoder how to read the colours (APP0 JFIF without a thumbnail, APP14 Adobe). Every
other APPn (EXIF with its GPS position, XMP, IPTC, ICC profiles, maker notes, the MPF index of a
multi-picture or Ultra HDR file) and every comment goes, wherever it stands (before the first
scan or between scans), and so does everything after the primary image's end-of-image marker (the
second pictures of MPF / Ultra HDR files, each with its own EXIF; trailers). The pixels are not
touched: the entropy-coded data is copied byte for byte.

The walk also reads the EXIF orientation of the primary image (the first EXIF before its first
scan), so a caller can turn the picture upright before that EXIF is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from device_sdk.protocol.errors import ErrorCode, ProtocolError

SOI, EOI, SOS, COM = 0xD8, 0xD9, 0xDA, 0xFE
APP0, APP1, APP14 = 0xE0, 0xE1, 0xEE
RST = frozenset(range(0xD0, 0xD8))
SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
"""Frame headers: baseline, extended, progressive, lossless; Huffman or arithmetic coded."""
TABLES = frozenset({0xC4, 0xCC, 0xDB, 0xDC, 0xDD})
"""DHT, DAC, DQT, DNL, DRI: what the scans need to be decoded."""
APPS = frozenset(range(0xE0, 0xF0))
JFIF, ADOBE = b"JFIF\0", b"Adobe"
"""The two APPn segments kept: they say how to read the picture's colours, not where, when or by
whom it was taken (JFIF without its thumbnail; its JFXX extension, a thumbnail, goes)."""
EXIF = b"Exif\0\0"
ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class Primary:
    """The primary picture of a JPEG with only its decoding segments, and what the walk read."""

    jpeg: bytes
    width: int
    height: int
    orientation: int
    """The EXIF orientation (1 to 8; 1 when there is none): 1 means the picture is upright as stored."""


def _bad(text: str) -> ProtocolError:
    return ProtocolError(f"not a JPEG this SDK takes: {text}", ErrorCode.BAD_IMAGE)


def primary(data: bytes) -> Primary:
    """The primary picture of `data` rebuilt from its decoding segments (see the module); a
    `ProtocolError(bad_image)` for a JPEG that is cut short, malformed or not one this SDK reads."""
    if data[:2] != b"\xff\xd8":
        raise _bad("no start-of-image marker")
    out = bytearray(b"\xff\xd8")
    size = len(data)
    pos, scans, orientation = 2, 0, 0
    frame: tuple[int, int] | None = None
    while True:
        if pos >= size or data[pos] != 0xFF:
            raise _bad("cut short: no end-of-image marker" if pos >= size else f"no marker at byte {pos}")
        while pos < size and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= size:
            raise _bad("cut short: no end-of-image marker")
        marker, start = data[pos], pos - 1
        pos += 1
        if marker == EOI:
            if frame is None or scans == 0:
                raise _bad("the image ends before any scan")
            out += b"\xff\xd9"  # and nothing after it: a second picture or a trailer stays behind
            return Primary(bytes(out), frame[0], frame[1], orientation or 1)
        if marker in RST or marker in (0x00, 0x01, SOI):
            raise _bad(f"marker 0x{marker:02X} out of place at byte {start}")
        if pos + 2 > size:
            raise _bad("cut short inside a segment header")
        length = int.from_bytes(data[pos : pos + 2], "big")
        end = pos + length
        if length < 2 or end > size:
            raise _bad(f"a segment of length {length} at byte {start} runs past the end")
        body = data[pos + 2 : end]
        if marker in APPS:
            if marker == APP1 and body.startswith(EXIF) and scans == 0 and not orientation:
                orientation = exif_orientation(body[len(EXIF) :])
            if marker == APP0 and body.startswith(JFIF) and len(body) >= 14:
                out += b"\xff\xe0\x00\x10" + body[:12] + b"\0\0"  # the JFIF header without its thumbnail
            elif marker == APP14 and body.startswith(ADOBE):
                out += data[start:end]
        elif marker == COM:
            pass
        elif marker in SOF:
            if frame is not None:
                raise _bad("a second frame header (hierarchical JPEG)")
            if len(body) < 6:
                raise _bad("a frame header too short")
            frame = (int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big"))
            out += data[start:end]
        elif marker in TABLES:
            out += data[start:end]
        elif marker == SOS:
            if frame is None:
                raise _bad("a scan before the frame header")
            stop = _scan_end(data, end)
            out += data[start:stop]
            pos, scans = stop, scans + 1
            continue
        else:
            raise _bad(f"marker 0x{marker:02X} at byte {start} is not one this SDK takes")
        pos = end


def _scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data that starts at `pos` ends: the first marker (with the fill
    bytes before it) that is neither a stuffed zero (0xFF00) nor a restart marker."""
    size = len(data)
    while True:
        ff = data.find(b"\xff", pos)
        after = ff + 1
        while 0 < after < size and data[after] == 0xFF:
            after += 1
        if ff < 0 or after >= size:
            raise _bad("cut short inside a scan: no end-of-image marker")
        if data[after] != 0x00 and data[after] not in RST:
            return ff
        pos = after + 1


def exif_orientation(tiff: bytes) -> int:
    """The orientation tag (0x0112) of IFD0 in an EXIF block's TIFF data; 1 when it is missing,
    malformed or out of range (the EXIF is dropped all the same)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    if int.from_bytes(tiff[2:4], order) != 42:
        return 1
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
        if int.from_bytes(tiff[entry : entry + 2], order) == ORIENTATION_TAG:
            kind = int.from_bytes(tiff[entry + 2 : entry + 4], order)
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order) if kind == 3 else 0
            return value if 1 <= value <= 8 else 1
    return 1
