"""Phone OEM intents: a signed intent from a simulated phone's assistant becomes an order confirmed
on the simulated system sheet, over the bus and over the bridge's local endpoint, on both brokers;
every kind of bad intent is refused with its code and asks nothing of the agent."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.bus.mqtt import MqttBus
from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import mandate_for, unverified_claims
from device_sdk.consent.readback import compose_phone_sheet, display_digest
from device_sdk.device.client import DeviceClient
from device_sdk.device.offer import Offer
from device_sdk.protocol.errors import ErrorCode, IntentError
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, Outcome
from device_sdk.protocol.messages import IntentResult, decode
from firmware_bridge.intents import MAX_INTENT, IntentVerifier, OemIntent, OemKeys
from firmware_bridge.phone import IntentBridge, SheetAnswer, deep_link
from simulators.phone import SimulatedPhone
from simulators.phone_demo import run_phone, send_intent
from simulators.scenario import ShopBackend
from tests.conftest import Restartable

VECTORS = Path(__file__).parent.parent / "docs" / "vectors"


# end to end --------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["bus", "http"])
async def test_a_phone_intent_becomes_an_order_confirmed_on_the_sheet(broker: Restartable, via: str) -> None:
    demo = await run_phone("buy two packs of AA batteries", via=via, broker=str(broker.url))  # type: ignore[arg-type]
    result = demo.result
    assert result.outcome is Outcome.ORDERED and result.order_id and result.code is None
    assert (result.total_minor, result.currency) == (2580, "CNY")
    assert demo.orders == 1 and demo.mandate_modality == "phone_sheet"
    assert demo.sheet is not None and demo.sheet.splitlines()[0] == "Confirm purchase"
    assert "2 x AA batteries, pack of 4 (HomeGoods Direct) 25.80 CNY" in demo.sheet.splitlines()
    kinds = [step.type for step in demo.steps]
    assert kinds.index("agent.request") < kinds.index("confirmation.request") < kinds.index("confirmation.result")
    answer = next(step for step in demo.steps if step.type == "confirmation.result")
    assert "confirm by phone_sheet" in answer.summary
    if via == "bus":  # the intent and its answer are on the timeline too
        routes = {step.type: step.route for step in demo.steps}
        assert routes["oem.intent"] == "oem-demo -> phone-1" and routes["intent.result"] == "phone-1 -> oem-demo"


async def test_an_intent_with_a_photo_asks_about_what_the_camera_saw() -> None:
    demo = await run_phone("buy two of these", photo="bat-aa-4", via="http")
    assert demo.result.outcome is Outcome.ORDERED and demo.orders == 1
    assert demo.sheet is not None and "2 x AA batteries, pack of 4" in demo.sheet


@pytest.mark.parametrize(
    ("tap", "outcome"), [("cancel", Outcome.DECLINED), ("none", Outcome.NOT_CONFIRMED)]
)  # fmt: skip
async def test_a_sheet_cancelled_or_left_orders_nothing(tap: str, outcome: Outcome) -> None:
    demo = await run_phone(tap=tap, via="bus")  # type: ignore[arg-type]
    assert demo.result.outcome is outcome and demo.result.order_id is None and demo.orders == 0
    assert demo.sheet is not None  # it was shown


async def test_a_phone_that_cannot_show_the_sheet_hands_the_cart_to_the_app() -> None:
    demo = await run_phone("buy two packs of AA batteries and a bottle of milk", tap="unavailable", via="http")
    result = demo.result
    assert result.outcome is Outcome.NOT_CONFIRMED and demo.orders == 0 and demo.sheet is None
    assert result.code is ErrorCode.NOT_CONFIRMED and result.deep_link is not None
    link = urlsplit(result.deep_link)
    query = parse_qs(link.query)
    assert f"{link.scheme}://{link.netloc}" == "shopagent://cart"
    assert query["items"] == ["bat-aa-4:2,milk-1l:1"] and query["total"] == ["3830"] and query["currency"] == ["CNY"]
    assert query["ref"][0].startswith("co_")


# a bridge to send bad intents to ---------------------------------------------------------------------


@dataclass
class Rig:
    phone: SimulatedPhone
    bridge: IntentBridge
    oem_bus: MqttBus
    shop: ShopBackend

    async def post(self, body: bytes) -> tuple[int, IntentResult]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{self.bridge.port}/v1/intents", data=body) as response,
        ):
            message = decode(await response.read())
        assert isinstance(message, IntentResult)
        return response.status, message


@pytest.fixture
async def rig(embedded: Restartable) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        shop = await stack.enter_async_context(ShopBackend(embedded.url))
        phone = SimulatedPhone("phone-1", shop.provision("phone-1", DeviceKind.PHONE), SigningKey.generate())
        device = await stack.enter_async_context(DeviceClient(embedded.url, "phone-1", kind=DeviceKind.PHONE))
        verifier = IntentVerifier(OemKeys([(phone.oem_id, phone.oem_key.public)]))
        bridge = await stack.enter_async_context(IntentBridge(device, verifier, phone, listen=("127.0.0.1", 0)))
        oem_bus = await stack.enter_async_context(MqttBus(embedded.url, "oem-demo"))
        yield Rig(phone, bridge, oem_bus, shop)


def forged(token: str, old: str, new: str) -> str:
    header, payload, signature = token.split(".")
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode().replace(old, new)
    return f"{header}.{base64.urlsafe_b64encode(data.encode()).rstrip(b'=').decode()}.{signature}"


async def test_bad_intents_are_refused_with_their_codes_and_ask_nothing(rig: Rig) -> None:
    phone = rig.phone
    stranger = SimulatedPhone("phone-1", phone.device_key, SigningKey.generate())  # an OEM key nobody registered
    good = phone.intent("buy two packs of AA batteries")
    plain = json.dumps(unverified_claims(good)).encode()
    header, payload, _ = good.split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"shop-intent+jws"}').rstrip(b"=").decode()
    now_ms = int(time.time() * 1000)
    cases: list[tuple[str, bytes, ErrorCode, int]] = [
        ("plain JSON", plain, ErrorCode.UNSIGNED, 401),
        ("alg none", f"{none_header}.{payload}.".encode(), ErrorCode.UNSIGNED, 401),
        ("no signature", f"{header}.{payload}.".encode(), ErrorCode.UNSIGNED, 401),
        ("unknown key", stranger.intent("buy milk").encode(), ErrorCode.UNKNOWN_KEY, 401),
        ("tampered", forged(good, "buy two", "buy ten").encode(), ErrorCode.BAD_SIGNATURE, 401),
        ("old", phone.intent("buy milk", timestamp_ms=now_ms - 600_000).encode(), ErrorCode.STALE, 400),
        ("future", phone.intent("buy milk", timestamp_ms=now_ms + 600_000).encode(), ErrorCode.STALE, 400),
        ("unknown action", phone.intent("buy milk", action="ai.shop.intent.action.LAUNCH").encode(),
         ErrorCode.UNKNOWN_ACTION, 422),
        ("oversized", b"x" * (MAX_INTENT + 1), ErrorCode.TOO_LARGE, 413),
        ("not a JWS", b"buy me milk", ErrorCode.BAD_MESSAGE, 400),
        ("another phone", SimulatedPhone("phone-2", phone.device_key, phone.oem_key).intent("buy milk").encode(),
         ErrorCode.BAD_MESSAGE, 400),
        ("bad image", phone.intent("buy this", image=b"not a jpeg", as_taken=True).encode(), ErrorCode.BAD_IMAGE,
         400),
    ]  # fmt: skip
    verified = {ErrorCode.STALE, ErrorCode.UNKNOWN_ACTION, ErrorCode.BAD_IMAGE}  # signed by a known key
    for name, body, code, status in cases:
        got_status, result = await rig.post(body)
        assert (result.code, got_status) == (code, status), name
        assert result.outcome is None and result.order_id is None, name
        assert (result.intent_id is not None) == (code in verified or name == "another phone"), name
    assert rig.shop.gateway.sessions == {}  # no agent request came from any of them
    assert rig.shop.checkout.orders == []
    status, result = await rig.post(good.encode())  # nothing was lost: the good one still orders
    assert status == 200 and result.outcome is Outcome.ORDERED
    status, again = await rig.post(good.encode())
    assert (status, again.code) == (409, ErrorCode.REPLAYED)
    assert len(rig.shop.checkout.orders) == 1


async def test_over_the_bus_an_intent_on_another_oems_topic_is_refused(rig: Rig) -> None:
    token = rig.phone.intent("buy two packs of AA batteries")
    topics = rig.bridge.device.topics
    async with await rig.oem_bus.subscribe(topics.oem_reply("oem-other", "phone-1")) as replies:
        await rig.oem_bus.publish(topics.oem_intent("oem-other", "phone-1"), token.encode())
        message = decode((await replies.get(timeout=10)).payload)
    assert isinstance(message, IntentResult) and message.code is ErrorCode.WRONG_TOPIC
    assert message.intent_id == unverified_claims(token)["intent_id"]  # type: ignore[index]  # which one it answers
    result = await send_intent(
        "bus", rig.phone.intent("buy a bottle of milk"), bus=rig.oem_bus, bridge=rig.bridge, oem_id="oem-demo"
    )
    assert result.outcome is Outcome.ORDERED


async def test_the_endpoint_describes_the_phone(rig: Rig) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{rig.bridge.port}/v1/device") as response,
    ):
        info = decode(await response.read())
    assert response.status == 200 and info.type == "device.info"
    assert info.kind is DeviceKind.PHONE  # type: ignore[union-attr]


# the verifier alone ---------------------------------------------------------------------------------


def test_the_published_intent_vector_verifies_byte_exact() -> None:
    vector = json.loads((VECTORS / "manifest.json").read_text())["intent"]
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["seed_hex"])))
    assert key.public.kid == vector["kid"] and key.public.raw.hex() == vector["public_key_hex"]
    from firmware_bridge.intents import sign_intent

    intent = OemIntent.model_validate(vector["intent"])
    assert sign_intent(key, intent) == vector["token"]  # Ed25519 is deterministic
    verifier = IntentVerifier(OemKeys([(intent.oem_id, key.public)]))
    assert verifier.check(vector["token"], now=vector["accepted_at"]) == intent
    for name, (token, code) in vector["refused"].items():
        with pytest.raises(IntentError) as refused:
            IntentVerifier(OemKeys([(intent.oem_id, key.public)])).check(token, now=vector["accepted_at"])
        assert refused.value.code == code, name


def test_a_key_belongs_to_one_oem_and_an_intent_must_name_it() -> None:
    key = SigningKey.generate()
    keys = OemKeys([("oem-a", key.public)])
    with pytest.raises(Exception, match="already registered"):
        keys.add("oem-b", key.public)
    phone = SimulatedPhone("phone-1", SigningKey.generate(), key, oem_id="oem-b")
    with pytest.raises(IntentError) as refused:
        IntentVerifier(keys).check(phone.intent("buy milk"))
    assert refused.value.code is ErrorCode.UNKNOWN_KEY


def test_oem_keys_round_trip_through_their_file(tmp_path: Path) -> None:
    keys = OemKeys([("oem-a", SigningKey.generate().public), ("oem-b", SigningKey.generate().public)])
    path = tmp_path / "oem-keys.json"
    path.write_text(keys.dump())
    loaded = OemKeys.load(path)
    assert len(loaded) == 2
    path.write_text('{"oems": "nope"}')
    with pytest.raises(Exception, match="expected"):
        OemKeys.load(path)


_PHONE = SimulatedPhone("phone-1", SigningKey.generate(), SigningKey.generate())
_VERIFIER = IntentVerifier(OemKeys([(_PHONE.oem_id, _PHONE.oem_key.public)]))
_GOOD = _PHONE.intent("buy two packs of AA batteries", intent_id="int_fuzz")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.text(max_size=2048).map(str.encode))
def test_any_bytes_are_an_intent_or_a_coded_refusal(data: bytes) -> None:
    with pytest.raises(IntentError) as refused:  # and nothing else: a coded refusal
        _VERIFIER.check(data)
    assert refused.value.code in set(ErrorCode)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_GOOD) - 1), st.sampled_from("AQgw_-.xZ="))
def test_a_signed_intent_with_any_character_changed_is_refused(position: int, char: str) -> None:
    changed = _GOOD[:position] + char + _GOOD[position + 1 :]
    if changed == _GOOD:
        return
    verifier = IntentVerifier(OemKeys([(_PHONE.oem_id, _PHONE.oem_key.public)]))
    if base64url_bytes(changed) == base64url_bytes(_GOOD):
        return  # a base64url part's last character can carry unused bits: the same bytes, the same intent
    with pytest.raises(IntentError) as refused:
        verifier.check(changed)
    assert refused.value.code in {
        ErrorCode.BAD_SIGNATURE,
        ErrorCode.BAD_MESSAGE,
        ErrorCode.UNSIGNED,
        ErrorCode.UNKNOWN_KEY,
    }


def base64url_bytes(token: str) -> list[bytes | None]:
    out: list[bytes | None] = []
    for part in token.split("."):
        try:
            out.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except ValueError:
            out.append(None)
    return out


def test_the_sheet_and_the_deep_link_say_exactly_the_proposal() -> None:
    from device_sdk.device.offer import Offer
    from device_sdk.protocol.messages import ConfirmationRequest

    request = decode((VECTORS / "confirmation.request.json").read_bytes())
    assert isinstance(request, ConfirmationRequest)
    sheet = compose_phone_sheet(request.proposal)
    assert sheet.splitlines() == [
        "Confirm purchase",
        "Pay Shop Agent Marketplace",
        "2 x AA batteries, pack of 4 (HomeGoods Direct) 25.80 CNY",
        "1 x Whole milk, 1 litre (FreshMart) 12.50 CNY",
        "Total 38.30 CNY",
        "[Cancel]  [Confirm]",
    ]
    assert display_digest(sheet) != request.display_digest  # a sheet is not the spoken read-back
    from device_sdk.consent.readback import presentation

    assert presentation(request.proposal, Modality.PHONE_SHEET) == sheet
    link = deep_link(Offer(request), "https://shop.example/cart")
    assert link.startswith("https://shop.example/cart?items=bat-aa-4%3A2%2Cmilk-1l%3A1&merchant=m-marketplace")


# the bridge as its own process ----------------------------------------------------------------------


@pytest.mark.mosquitto
async def test_firmware_bridge_phone_runs_as_a_process_with_the_sheet_on_the_phones_service(
    mosquitto: Restartable, tmp_path: Path
) -> None:
    """`firmware-bridge phone` in front of the shop on a Mosquitto started by the test; the phone's
    sheet service (simulated, over local HTTP) shows the sheet and signs the mandate; one intent
    arrives at the local endpoint, one on the bus."""
    from device_sdk.bus.mosquitto import free_port
    from simulators.phone import SheetServer

    async with ShopBackend(mosquitto.url) as shop, contextlib.AsyncExitStack() as stack:
        phone = SimulatedPhone("phone-7", shop.provision("phone-7", DeviceKind.PHONE), SigningKey.generate())
        sheet = await stack.enter_async_context(SheetServer(phone))
        keys = tmp_path / "oem-keys.json"
        keys.write_text(OemKeys([(phone.oem_id, phone.oem_key.public)]).dump())
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firmware_bridge", "phone", "--broker", str(mosquitto.url), "--device-id", "phone-7",
            "--oem-keys", str(keys), "--listen", f"127.0.0.1:{port}", "--sheet-url", sheet.url,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stderr is not None
            ready = await asyncio.wait_for(process.stderr.readline(), 30)
            assert b"takes intents of 1 OEM key(s)" in ready and f":{port}/v1/intents".encode() in ready
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"http://127.0.0.1:{port}/v1/intents", data=phone.intent("buy a bottle of milk")) as reply,
            ):
                posted = decode(await reply.read())
            oem = await stack.enter_async_context(MqttBus(mosquitto.url, "oem-demo"))
            topics = shop.topics
            token = phone.intent("buy two packs of AA batteries").encode()
            async with await oem.subscribe(topics.oem_reply(phone.oem_id, "phone-7")) as replies:
                await oem.publish(topics.oem_intent(phone.oem_id, "phone-7"), token)
                on_bus = decode((await replies.get(timeout=30)).payload)
        finally:
            process.terminate()
            await process.wait()
    assert isinstance(posted, IntentResult) and posted.outcome is Outcome.ORDERED and reply.status == 200
    assert isinstance(on_bus, IntentResult) and on_bus.outcome is Outcome.ORDERED
    assert len(shop.checkout.orders) == 2 and len(phone.shown) == 2
    assert shop.verifier.last is not None and shop.verifier.last.modality == "phone_sheet"
    assert shop.verifier.last.device_id == "phone-7"


async def test_a_sheet_service_that_cannot_show_or_does_not_answer_means_no_sheet() -> None:
    from device_sdk.bus.mosquitto import free_port
    from device_sdk.device.offer import Offer
    from device_sdk.protocol.messages import ConfirmationRequest
    from firmware_bridge.phone import HttpSheet
    from simulators.phone import SheetServer

    request = decode((VECTORS / "confirmation.request.json").read_bytes())
    assert isinstance(request, ConfirmationRequest)
    offer, text = Offer(request), compose_phone_sheet(request.proposal)
    phone = SimulatedPhone("speaker-1", SigningKey.generate(), SigningKey.generate(), tap="unavailable")
    async with SheetServer(phone) as server:
        assert await HttpSheet(server.url).present(offer, text) is None
        phone.tap = "cancel"
        answer = await HttpSheet(server.url).present(offer, text)
    assert answer is not None and answer.decision.value == "decline" and answer.mandate is None
    assert phone.shown == [text]
    assert await HttpSheet(f"http://127.0.0.1:{free_port()}/sheet", timeout=2).present(offer, text) is None


def test_simulate_phone_on_the_command_line() -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "simulate", "phone", "--via", "http", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "ordered" and report["orders"] == 1 and report["mandate_modality"] == "phone_sheet"
    assert report["sheet"].startswith("Confirm purchase\n")
    declined = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "simulate", "phone", "--sheet", "unavailable"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert declined.returncode == 0, declined.stderr  # as asked: nothing ordered
    assert "handed to the app: shopagent://cart?items=bat-aa-4%3A2" in declined.stdout


async def test_an_intent_with_a_large_photo_is_taken(rig: Rig) -> None:
    from simulators.photos import product_photo

    photo = product_photo("bat-aa-4", "AA batteries, pack of 4", size=(1280, 960), quality=95)
    comment = b"\xff\xfe" + (65533).to_bytes(2, "big") + b"x" * 65531  # metadata that is stripped
    jpeg = photo[:2] + comment + photo[2:]
    assert 200_000 < len(jpeg) <= 256 * 1024
    token = rig.phone.intent("buy two of these", image=jpeg)  # signed with its picture stripped
    assert len(token) > 128_000  # over joserfc's default payload limit all the same
    status, result = await rig.post(token.encode())
    assert status == 200 and result.outcome is Outcome.ORDERED


async def test_a_sheet_that_signs_other_text_than_it_was_given_orders_nothing(rig: Rig) -> None:
    """The mandate binds the digest of what the phone showed; the gateway and the verifier compose
    the sheet themselves, so a sheet that shows (and signs) anything else is refused."""
    from device_sdk.consent.readback import compose_readback

    phone = rig.phone

    async def present_other(offer: object, text: str) -> SheetAnswer:
        assert isinstance(offer, Offer)
        shown = compose_readback(offer.request.proposal)  # the spoken read-back, not the sheet
        mandate = mandate_for(offer.request, phone.device_key, device_id=phone.device_id,
                              modality=Modality.PHONE_SHEET, display_digest=display_digest(shown))  # fmt: skip
        return SheetAnswer(Decision.CONFIRM, mandate)

    rig.bridge.sheet = type("OtherSheet", (), {"present": staticmethod(present_other)})()
    status, result = await rig.post(phone.intent("buy two packs of AA batteries").encode())
    assert status == 200 and result.outcome is Outcome.NOT_CONFIRMED and result.order_id is None
    assert rig.shop.checkout.orders == []
