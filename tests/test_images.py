"""Camera images: metadata stripped without touching the picture, refused when broken, stored by hash."""

from __future__ import annotations

import asyncio
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageChops, ImageOps, ImageStat, PngImagePlugin

from device_sdk.media.images import ImageStore, image_ref, strip_metadata
from device_sdk.protocol.errors import ErrorCode, ProtocolError
from simulators.camera_files import LOCATION, SECRETS, SERIAL, exif_body, phone_photo, segment
from simulators.photos import product_photo, read_tag

PHOTO = product_photo("bat-aa-4", "AA batteries, pack of 4")


def test_exif_gps_and_comments_are_stripped_and_the_pixels_kept() -> None:
    with Image.open(io.BytesIO(PHOTO)) as before:
        assert before.getexif().get_ifd(0x8825)  # the camera wrote a GPS position
        pixels = before.tobytes()
    clean = strip_metadata(PHOTO)
    assert b"Exif" not in clean and b"SN-0042" not in clean and b"SimGlass" not in clean
    with Image.open(io.BytesIO(clean)) as after:
        assert not after.getexif() and "comment" not in after.info
        assert after.tobytes() == pixels  # not re-encoded
    assert strip_metadata(clean) == clean
    assert read_tag(clean) == "bat-aa-4"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.BAD_IMAGE),
        (b"GIF89a", ErrorCode.BAD_IMAGE),
        (PHOTO[:2000], ErrorCode.BAD_IMAGE),  # cut inside the headers or the scan
        (PHOTO[:-2], ErrorCode.BAD_IMAGE),  # no end-of-image marker
        (b"\xff\xd8" + b"\xff\xe1\xff\xff", ErrorCode.BAD_IMAGE),  # a segment longer than the file
        (b"\xff\xd8" + bytes(2_000_000), ErrorCode.TOO_LARGE),
    ],
)
def test_broken_images_are_refused_with_a_code(data: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        strip_metadata(data)
    assert caught.value.code is code


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=len(PHOTO)))
def test_fuzz_strip_never_crashes(noise: bytes, cut: int) -> None:
    for data in (noise, b"\xff\xd8" + noise, PHOTO[:cut] + noise):
        try:
            clean = strip_metadata(data)
        except ProtocolError as exc:
            assert exc.code in (ErrorCode.BAD_IMAGE, ErrorCode.TOO_LARGE)  # noqa: PT017
        else:
            assert clean.startswith(b"\xff\xd8") and len(clean) <= len(data)


async def test_store_keeps_recent_images_by_reference_and_waits_for_late_ones() -> None:
    store = ImageStore(max_images=2)
    first = await store.put(PHOTO)
    assert first == image_ref(strip_metadata(PHOTO)) and store.get(first) == strip_metadata(PHOTO)
    assert await store.wait("sha256:" + "0" * 64, 0.05) is None
    other = product_photo("milk-1l", "Milk")

    waiter = asyncio.create_task(store.wait(image_ref(strip_metadata(other)), 2.0))
    await asyncio.sleep(0)
    await store.put(other)
    assert await waiter == strip_metadata(other)
    await store.put(product_photo("x-1", "X"))
    assert store.get(first) is None and len(store) == 2  # the oldest made room


# issue 18, finding 4: multi-picture files, metadata after the first scan, orientation, other formats ---------

PHONE = phone_photo()


def test_finding_4_a_phone_multi_picture_jpeg_keeps_only_the_primary_picture_without_metadata() -> None:
    with Image.open(io.BytesIO(PHONE)) as original:  # the file is real: Pillow reads an MPO of two pictures
        assert original.format == "MPO" and getattr(original, "n_frames", 1) == 2
        assert original.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        primary_pixels = original.tobytes()
        original.seek(1)
        assert original.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the gain map has a position of its own
    clean = strip_metadata(PHONE)
    for secret in SECRETS:
        assert secret not in clean, secret
    assert clean.endswith(b"\xff\xd9") and len(clean) < len(PHONE)
    with Image.open(io.BytesIO(clean)) as after:
        assert after.format == "JPEG" and getattr(after, "n_frames", 1) == 1
        assert not after.getexif() and not {"exif", "xmp", "mp", "mpinfo", "comment", "icc_profile"} & set(after.info)
        assert after.tobytes() == primary_pixels  # upright already: not re-encoded
    assert read_tag(clean) == "bat-aa-4" and strip_metadata(clean) == clean
    assert strip_metadata(bytearray(PHONE)) == clean


def test_finding_4_exif_and_comments_after_the_scan_of_a_baseline_jpeg_are_dropped() -> None:
    with Image.open(io.BytesIO(PHOTO)) as photo:
        plain = io.BytesIO()
        photo.save(plain, "JPEG", quality=85, comment=b"")  # baseline, one scan, no EXIF, no comment
    late = segment(0xE1, exif_body("PhoneCam", SERIAL, LOCATION)) + segment(0xFE, b"edited on the phone")
    trailer = b"\xff\xd8" + segment(0xE1, exif_body("PhoneCam", SERIAL, LOCATION))  # after EOI: not a picture
    jpeg = plain.getvalue()[:-2] + late + b"\xff\xd9" + trailer
    with Image.open(io.BytesIO(jpeg)) as before:
        pixels = before.tobytes()  # a decoder reads past what stands after the scan
    clean = strip_metadata(jpeg)
    assert b"Exif" not in clean and SERIAL.encode() not in clean and b"edited" not in clean
    assert clean == plain.getvalue()  # exactly the picture without what was added
    with Image.open(io.BytesIO(clean)) as after:
        assert after.tobytes() == pixels


@pytest.mark.parametrize("orientation", range(2, 9))
def test_finding_4_orientation_is_applied_before_the_exif_goes(orientation: int) -> None:
    jpeg = phone_photo(orientation=orientation)
    with Image.open(io.BytesIO(jpeg)) as stored:
        reference = ImageOps.exif_transpose(stored)  # what a viewer shows
    assert read_tag(jpeg) is None or orientation in (2, 4)  # stored turned: the tag strip is not at the bottom
    clean = strip_metadata(jpeg)
    for secret in SECRETS:
        assert secret not in clean, secret
    with Image.open(io.BytesIO(clean)) as upright:
        assert not upright.getexif() and upright.size == reference.size == (640, 480)
        difference = ImageStat.Stat(ImageChops.difference(upright.convert("RGB"), reference.convert("RGB")))
        assert max(difference.mean) < 4  # the same picture, re-encoded once
    assert read_tag(clean) == "bat-aa-4" and strip_metadata(clean) == clean


def _png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("GPSLatitude", "31.23")
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def _webp_with_exif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "WEBP", exif=exif_body("PhoneCam", SERIAL, LOCATION))
    return out.getvalue()


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (_png_with_text(), "PNG"),
        (_webp_with_exif(), "WebP"),
        (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64), "HEIC"),
        (b"GIF89a" + bytes(32), "GIF"),
        (b"II*\0" + bytes(32), "TIFF"),
    ],
    ids=["png", "webp", "heic", "gif", "tiff"],
)
def test_finding_4_other_image_formats_are_refused_by_name(data: bytes, name: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        strip_metadata(data)
    assert caught.value.code is ErrorCode.BAD_IMAGE and name in caught.value.text and "JPEG" in caught.value.text


@pytest.mark.parametrize(
    "value",
    [memoryview(PHOTO), PHOTO.decode("latin-1"), None, 42, [0xFF, 0xD8]],
    ids=["memoryview", "str", "none", "int", "list"],
)
def test_finding_4_wrong_types_get_the_sdks_error(value: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        strip_metadata(value)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.BAD_IMAGE and type(value).__name__ in caught.value.text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(PHONE)), st.integers(min_value=0, max_value=len(PHONE) - 1),
       st.integers(min_value=0, max_value=255))  # fmt: skip
def test_fuzz_strip_of_cut_or_altered_multi_picture_files_never_crashes(cut: int, at: int, value: int) -> None:
    altered = bytearray(PHONE)
    altered[at] = value
    for data in (PHONE[:cut], bytes(altered)):
        try:
            clean = strip_metadata(data)
        except ProtocolError as exc:
            assert exc.code in (ErrorCode.BAD_IMAGE, ErrorCode.TOO_LARGE)  # noqa: PT017
        else:
            assert clean.startswith(b"\xff\xd8") and clean.endswith(b"\xff\xd9")
            assert strip_metadata(clean) == clean  # what comes out is a clean walk of itself


def test_finding_4_thumbnails_in_jfif_and_jfxx_go_too() -> None:
    with Image.open(io.BytesIO(PHOTO)) as photo:
        plain = io.BytesIO()
        photo.save(plain, "JPEG", quality=85, comment=b"")
    jfif_end = 4 + int.from_bytes(plain.getvalue()[4:6], "big")
    thumbnail = bytes([0x51, 0x52, 0x53]) * 4  # 2x2 RGB pixels of the unstripped picture
    jfif = segment(0xE0, b"JFIF\0\x01\x01\0\0\x01\0\x01\x02\x02" + thumbnail)
    jfxx = segment(0xE0, b"JFXX\0\x10" + b"\xff\xd8" + segment(0xE1, exif_body("PhoneCam", SERIAL, LOCATION)))
    jpeg = b"\xff\xd8" + jfif + jfxx + plain.getvalue()[jfif_end:]
    clean = strip_metadata(jpeg)
    assert clean[2:20] == b"\xff\xe0\x00\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0"  # the header, no thumbnail
    assert thumbnail not in clean and b"JFXX" not in clean and SERIAL.encode() not in clean
    with Image.open(io.BytesIO(clean)) as after, Image.open(plain) as before:
        assert after.tobytes() == before.tobytes()
