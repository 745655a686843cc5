"""Camera images: metadata stripped without touching the picture, refused when broken, stored by hash."""

from __future__ import annotations

import asyncio
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from device_sdk.media.images import ImageStore, image_ref, strip_metadata
from device_sdk.protocol.errors import ErrorCode, ProtocolError
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
