"""Glasses over BLE, with no hardware: simulated glasses on bumble's virtual link, driven through
bleak's own BleakScanner and BleakClient (a custom backend), the glasses driver, and the shop."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from device_sdk.consent.keys import SigningKey
from device_sdk.consent.lens import LENS_SIZE, LensCard
from device_sdk.consent.mandate import unverified_claims
from device_sdk.consent.readback import compose_lens_card, presentation_digest
from device_sdk.protocol.errors import BusError, ErrorCode, FrameError
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, Outcome
from device_sdk.voice.listener import Listener
from device_sdk.voice.tts import espeak_available, synthesize, trim_silence
from firmware_bridge import gatt
from firmware_bridge.glasses import GlassesDriver
from firmware_bridge.link import Connected, Disconnected, GlassesLink, Health, find_glasses
from simulators.ble_radio import BumbleClient, BumbleScanner, VirtualRadio
from simulators.glasses import SimulatedGlasses
from simulators.glasses_demo import run_glasses
from simulators.photos import product_photo, read_tag
from simulators.scenario import ShopBackend

pytestmark = pytest.mark.timeout(60)
PHOTO = product_photo("bat-aa-4", "AA batteries, pack of 4")


@pytest.fixture
async def radio() -> VirtualRadio:
    return VirtualRadio()


async def _link(radio: VirtualRadio, glasses: SimulatedGlasses, **options: object) -> GlassesLink:
    central = await radio.central()
    found = await find_glasses(name=glasses.name, backend=BumbleScanner, central=central)
    assert [f.name for f in found] == [glasses.name]
    return GlassesLink(found[0].device, backend=BumbleClient, health_every=0.05, **options)  # type: ignore[arg-type]


@pytest.fixture
async def pair(radio: VirtualRadio) -> AsyncIterator[tuple[SimulatedGlasses, GlassesLink]]:
    async with SimulatedGlasses(radio, photo=lambda: PHOTO) as glasses, await _link(radio, glasses) as link:
        yield glasses, link


async def test_scan_finds_each_pair_by_service_and_name(radio: VirtualRadio) -> None:
    async with SimulatedGlasses(radio, "Lens-A"), SimulatedGlasses(radio, "Lens-B"):
        central = await radio.central()
        everyone = await find_glasses(timeout=0.5, backend=BumbleScanner, central=central)
        assert sorted(f.name for f in everyone) == ["Lens-A", "Lens-B"]
        chosen = await find_glasses(name="Lens-B", backend=BumbleScanner, central=central)
        assert [f.name for f in chosen] == ["Lens-B"]


async def test_connect_agrees_version_and_limits_and_reads_standard_services(
    pair: tuple[SimulatedGlasses, GlassesLink],
) -> None:
    glasses, link = pair
    assert link.version == 1
    assert link.limits == gatt.Limits(att_payload=244, window=32, max_message=1 << 20)  # MTU 247 asked for
    assert glasses.limits == link.limits
    assert await link.read_battery() == 87
    assert await link.read_firmware() == "simglass-1.0"


async def test_photo_arrives_byte_identical_and_the_lens_shows_the_exact_card(
    pair: tuple[SimulatedGlasses, GlassesLink],
) -> None:
    glasses, link = pair
    assert await link.capture() == PHOTO
    card = LensCard("Confirm order\n1 x Thing | 1.00 CNY\nTap to confirm, swipe to cancel")
    assert await link.show(card.payload) == card.digest
    assert glasses.shown == card.digest
    assert glasses.screen.size == LENS_SIZE and glasses.screen.getbbox() is not None  # something is drawn
    await glasses.gesture(gatt.Gesture.NOD)
    seen: list[object] = []
    async for event in link.events():
        if not isinstance(event, Health):
            seen.append(event)
        if len(seen) == 3:
            break
    assert isinstance(seen[0], Connected)
    assert seen[1:] == [gatt.Shown(digest=card.digest), gatt.Input(gesture=gatt.Gesture.NOD, digest=card.digest)]


async def test_disconnect_mid_photo_reconnects_and_the_photo_is_byte_identical(
    pair: tuple[SimulatedGlasses, GlassesLink],
) -> None:
    glasses, link = pair
    glasses.drop_link_after(camera_frames=40)  # of 124: cut in the middle of the transfer
    assert await link.capture() == PHOTO
    assert glasses.connections == 2 and link.reconnects == 1
    assert link.limits is not None and glasses.limits == link.limits  # hello redone on the new connection
    kinds = []
    async for event in link.events():
        kinds.append(type(event))
        if len(kinds) > 1 and kinds[-1] is Connected:
            break
    assert Disconnected in kinds
    assert link.retransmits_asked > 0  # the gateway asked for exactly what it lacked
    assert await link.capture() == PHOTO  # and the link goes on working


async def test_health_events_report_traffic(pair: tuple[SimulatedGlasses, GlassesLink]) -> None:
    _glasses, link = pair
    await link.capture()
    async with asyncio.timeout(5):
        async for event in link.events():
            if isinstance(event, Health) and event.bytes_in >= len(PHOTO):
                break
    assert event.att_payload == 244 and event.reconnects == 0


async def test_one_link_per_device(radio: VirtualRadio, pair: tuple[SimulatedGlasses, GlassesLink]) -> None:
    _glasses, link = pair
    with pytest.raises(BusError) as caught:
        await GlassesLink(link.address, backend=BumbleClient, options={"central": await radio.central()}).connect()
    assert caught.value.code is ErrorCode.BUSY


async def test_no_common_version_is_refused_with_a_code(radio: VirtualRadio) -> None:
    async with SimulatedGlasses(radio, versions=(2,)) as glasses:
        link = await _link(radio, glasses)
        with pytest.raises(FrameError) as caught:
            await link.connect()
        assert caught.value.code is ErrorCode.UNSUPPORTED_VERSION


async def test_glasses_flow_photo_card_tap_order(tmp_path: object) -> None:
    png = f"{tmp_path}/lens.png"
    demo = await run_glasses("buy two of these", tap="confirm", png=png)
    run = demo.run
    assert run.image_ref is not None and run.offer is not None and run.card is not None
    proposal = run.offer.request.proposal
    assert [(line.sku, line.qty) for line in proposal.lines] == [("bat-aa-4", 2)]  # "these" = what the photo shows
    assert run.card.text == compose_lens_card(proposal)
    assert run.card.digest == presentation_digest(proposal, Modality.LENS_TAP)
    assert run.decision is Decision.CONFIRM and run.result is not None and run.result.outcome is Outcome.ORDERED
    assert demo.orders == 1
    claims = unverified_claims(run.mandate or "")
    assert claims is not None
    assert claims["modality"] == "lens_tap" and claims["display_digest"] == run.card.digest
    with Image.open(png) as image:
        assert image.size == LENS_SIZE
    assert read_tag(product_photo("bat-aa-4", "AA batteries, pack of 4")) == "bat-aa-4"


async def test_glasses_flow_swipe_declines_and_nothing_is_ordered() -> None:
    demo = await run_glasses("buy two of these", tap="cancel")
    assert demo.run.decision is Decision.DECLINE and demo.run.mandate is None
    assert demo.run.result is not None and demo.run.result.outcome is not Outcome.ORDERED
    assert demo.orders == 0


async def test_no_gesture_is_no_answer() -> None:
    demo = await run_glasses("buy two of these", tap="none", decision_timeout=0.3)
    assert demo.run.decision is Decision.NO_ANSWER and demo.orders == 0


async def test_a_tap_on_another_card_does_not_confirm(pair: tuple[SimulatedGlasses, GlassesLink]) -> None:
    glasses, link = pair
    driver = GlassesDriver(link, device=None)  # type: ignore[arg-type]
    card = LensCard("Confirm order\n1 x Thing | 1.00 CNY\nTap to confirm, swipe to cancel")
    other = LensCard("Confirm order\n9 x Thing | 9.00 CNY\nTap to confirm, swipe to cancel")
    await link.show(other.payload)
    await glasses.gesture(gatt.Gesture.TAP)  # on the other card
    assert await driver.gesture(card, timeout=0.3) is None
    await link.show(card.payload)
    await glasses.gesture(gatt.Gesture.TAP)
    assert await driver.gesture(card, timeout=2.0) is gatt.Gesture.TAP


@pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng (./dev test installs it)")
async def test_spoken_words_cross_the_link_unchanged(pair: tuple[SimulatedGlasses, GlassesLink]) -> None:
    glasses, link = pair
    speech = trim_silence(await asyncio.to_thread(synthesize, "buy two of these"))
    listener = Listener(link.audio())
    await link.command(gatt.Mic(on=True))
    await glasses.speak(speech)
    utterance = await listener.next(5.0)
    await listener.aclose()
    assert utterance is not None and speech in utterance.pcm


def test_card_png_is_the_lens_size() -> None:
    card = LensCard("Confirm order\nTap to confirm, swipe to cancel")
    with Image.open(io.BytesIO(card.png())) as image:
        assert image.size == LENS_SIZE and image.format == "PNG"


async def _bridge(url: str, key_file: str, *extra: str) -> tuple[int, list[dict[str, object]], str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_bridge", "run", "--simulated", "--broker", url, "--key", key_file,
        "--sessions", "1", "--json", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


@pytest.mark.timeout(120)
async def test_firmware_bridge_process_carries_the_glasses_onto_mosquitto(mosquitto: Any, tmp_path: Path) -> None:
    """`firmware-bridge run --simulated` as its own process, on a real Mosquitto, in front of the shop:
    the wearer taps the blank lens, the bridge asks for one of what the photo shows, the wearer taps
    the card, the order is placed with a lens_tap mandate by the glasses' own key."""
    key = SigningKey.generate()
    key.save(tmp_path / "glasses.key")
    async with ShopBackend(mosquitto.url, shared=None) as shop:
        shop.enroll("glasses-1", key, DeviceKind.GLASSES)
        code, sessions, err = await _bridge(str(mosquitto.url), str(tmp_path / "glasses.key"))
        assert code == 0, err
        assert [s["outcome"] for s in sessions] == ["ordered"] and sessions[0]["gesture"] == "tap"
        assert len(shop.checkout.orders) == 1
        last = shop.verifier.last
        assert last is not None and (last.device_id, last.modality) == ("glasses-1", "lens_tap")


@pytest.mark.timeout(120)
@pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng (./dev test installs it)")
async def test_bridge_hears_the_wearer_through_the_glasses_microphone(mosquitto: Any, tmp_path: Path) -> None:
    key = SigningKey.generate()
    key.save(tmp_path / "glasses.key")
    async with ShopBackend(mosquitto.url, shared=None) as shop:
        shop.enroll("glasses-1", key, DeviceKind.GLASSES)
        said = "buy two packs of double a batteries"
        code, sessions, err = await _bridge(str(mosquitto.url), str(tmp_path / "glasses.key"), "--say", said)
        assert code == 0, err
        assert sessions[0]["heard"] == said and sessions[0]["outcome"] == "ordered"
        assert [order.total_minor for order in shop.checkout.orders] == [2 * 1290]  # two packs, 12.90 each
