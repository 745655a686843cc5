"""Camera files as phones write them, built byte by byte, so the stripping has real ones to strip.

`phone_photo` makes what a phone camera saves for a shot of a catalog product: a progressive JPEG
(the pixels `product_photo` draws) whose EXIF carries the camera, its serial number, the GPS
position, an orientation and an embedded thumbnail (a whole JPEG inside the EXIF, with its own
end-of-image marker), an XMP packet with the position again, and an MPF index (APP2) of a second
picture appended after the primary one's end-of-image marker: an Ultra HDR gain map, itself a
JPEG with its own EXIF and GPS. Between the first scan and the second sits one more EXIF block
and a comment, as some editors leave them. Pillow opens the whole file as a two-frame MPO.

`LOCATION` and `SECOND_LOCATION` are the positions written; `SECRETS` are the strings a stripped
file must no longer contain.
"""

from __future__ import annotations

import io

from PIL import ExifTags, Image

from .photos import product_photo

LOCATION = (31.2300, 121.4700)
SECOND_LOCATION = (48.8566, 2.3522)
SERIAL, SECOND_SERIAL, LATE_SERIAL = "SN-PHONE-5521", "SN-GAINMAP-0007", "SN-LATE-EXIF-11"
SECRETS = (
    b"Exif\0\0",
    b"MPF\0",
    b"http://ns.adobe.com/xap",
    b"PhoneCam",
    SERIAL.encode(),
    SECOND_SERIAL.encode(),
    LATE_SERIAL.encode(),
    b"edited on the phone",
    b"hdrgm",
)
"""Bytes that only the metadata of a `phone_photo` holds."""
_ORIENTED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
"""How a camera stores an upright picture for each EXIF orientation (the inverse of displaying it)."""


def segment(marker: int, body: bytes) -> bytes:
    """One marker segment: 0xFF, the marker, the big-endian length (with itself), the body."""
    return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body


def _degrees(value: float) -> tuple[float, float, float]:
    minutes, seconds = divmod(abs(value) * 3600, 60)
    degrees, minutes = divmod(minutes, 60)
    return (float(degrees), float(minutes), round(seconds, 2))


def exif_body(
    make: str, serial: str, location: tuple[float, float], *, orientation: int = 1, thumbnail: bytes = b""
) -> bytes:
    """An APP1 EXIF body: `Exif\\0\\0`, the TIFF data Pillow writes, and an embedded thumbnail after it."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = make
    exif[ExifTags.Base.Model] = f"{make} 12 Pro"
    exif[ExifTags.Base.BodySerialNumber] = serial
    exif[ExifTags.Base.DateTime] = "2026:11:26 09:30:00"
    exif[ExifTags.Base.Orientation] = orientation
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N" if location[0] >= 0 else "S"
    gps[ExifTags.GPS.GPSLatitude] = _degrees(location[0])
    gps[ExifTags.GPS.GPSLongitudeRef] = "E" if location[1] >= 0 else "W"
    gps[ExifTags.GPS.GPSLongitude] = _degrees(location[1])
    return exif.tobytes() + thumbnail


def xmp_body(location: tuple[float, float], extra: str = "") -> bytes:
    packet = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="{location[0]}"'
        f' exif:GPSLongitude="{location[1]}" {extra}/></rdf:RDF></x:xmpmeta>'
    )
    return b"http://ns.adobe.com/xap/1.0/\0" + packet.encode()


def mpf_body(primary_size: int, second_offset: int, second_size: int) -> bytes:
    """An APP2 MPF body (CIPA DC-007): a big-endian TIFF header and an MP index of two pictures.
    Offsets count from the TIFF header (the byte after `MPF\\0`); the primary's is 0."""
    entries = (
        (0x20030000).to_bytes(4, "big") + primary_size.to_bytes(4, "big") + bytes(8)  # representative, primary
        + (0x00000000).to_bytes(4, "big") + second_size.to_bytes(4, "big") + second_offset.to_bytes(4, "big")
        + bytes(4)
    )  # fmt: skip
    ifd_at, count = 8, 3
    data_at = ifd_at + 2 + count * 12 + 4
    ifd = count.to_bytes(2, "big")
    ifd += (0xB000).to_bytes(2, "big") + (7).to_bytes(2, "big") + (4).to_bytes(4, "big") + b"0100"
    ifd += (0xB001).to_bytes(2, "big") + (4).to_bytes(2, "big") + (1).to_bytes(4, "big") + (2).to_bytes(4, "big")
    ifd += (0xB002).to_bytes(2, "big") + (7).to_bytes(2, "big") + (32).to_bytes(4, "big") + data_at.to_bytes(4, "big")
    ifd += bytes(4)  # no next IFD
    return b"MPF\0" + b"MM\0\x2a" + ifd_at.to_bytes(4, "big") + ifd + entries


def _jpeg(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def upright_picture(sku: str, name: str) -> Image.Image:
    """The picture as the user saw it: `product_photo`'s pixels, its tag strip at the bottom."""
    with Image.open(io.BytesIO(product_photo(sku, name))) as photo:
        return photo.convert("RGB")


def phone_photo(sku: str = "bat-aa-4", name: str = "AA batteries, pack of 4", *, orientation: int = 1) -> bytes:
    """A phone camera's multi-picture JPEG of the product, stored turned as `orientation` says."""
    upright = upright_picture(sku, name)
    turn = _ORIENTED[orientation]
    stored = upright.transpose(turn) if turn is not None else upright
    plain = _jpeg(stored, quality=90, progressive=True)  # SOI, APP0 JFIF, tables, scans, EOI
    assert plain[2:4] == b"\xff\xe0", "Pillow starts with JFIF"
    app0_end = 4 + int.from_bytes(plain[4:6], "big")
    first_sos = plain.index(b"\xff\xda")
    second_sos = plain.index(b"\xff\xda", first_sos + 2)  # progressive: more scans follow, tables between
    late = segment(0xE1, exif_body("PhoneCam", LATE_SERIAL, LOCATION)) + segment(0xFE, b"edited on the phone")
    gain_map = _jpeg(upright.convert("L").resize((upright.width // 4, upright.height // 4)), quality=80)
    second = (
        gain_map[:2]
        + segment(0xE1, exif_body("PhoneCam", SECOND_SERIAL, SECOND_LOCATION))
        + segment(0xE1, xmp_body(SECOND_LOCATION, 'xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/"'))
        + gain_map[2:]
    )
    thumbnail = _jpeg(stored.resize((stored.width // 8, stored.height // 8)), quality=70)
    head = segment(
        0xE1, exif_body("PhoneCam", SERIAL, LOCATION, orientation=orientation, thumbnail=thumbnail)
    ) + segment(0xE1, xmp_body(LOCATION))
    body = plain[app0_end:second_sos] + late + plain[second_sos:]
    mpf_at = 2 + (app0_end - 2) + len(head)  # where the MPF segment starts in the file
    size = mpf_at + len(segment(0xE2, mpf_body(0, 0, 0))) + len(body)
    mpf = segment(0xE2, mpf_body(size, size - (mpf_at + 8), len(second)))  # from the TIFF header
    return plain[:app0_end] + head + mpf + body + second
