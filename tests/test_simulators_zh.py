"""zh-CN glasses and phone in the demo paths: the simulated wearer asks in Chinese ("帮我买两个这个"
with the camera on a product), the glasses declare zh-CN and show a Chinese card on the lens, the
tap orders; the simulated phone's assistant sends Chinese text and the sheet is Chinese; a phone
refuses an intent in another language than it declared (unsupported_locale, 422) and asks nothing.
The reference agent reads Chinese deictic words (这个, 这些, 这款, 这瓶, 两个这个) as the product the
photo shows."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from device_sdk.consent.keys import SigningKey
from device_sdk.consent.lens import LENS_SIZE
from device_sdk.consent.mandate import unverified_claims
from device_sdk.consent.readback import compose_lens_card
from device_sdk.device.client import DeviceClient
from device_sdk.locale import locale_for
from device_sdk.protocol.errors import AgentError, ErrorCode
from device_sdk.protocol.fields import Decision, DeviceKind, Outcome
from device_sdk.protocol.messages import IntentResult, decode
from firmware_bridge.glasses import default_ask
from firmware_bridge.intents import IntentVerifier, OemKeys
from firmware_bridge.phone import IntentBridge
from simulators.catalog import demo_catalog
from simulators.command_parser_zh import ChineseCommandParser
from simulators.deictic import has_deictic, resolve
from simulators.glasses_demo import run_glasses
from simulators.phone import SimulatedPhone
from simulators.phone_demo import run_phone
from simulators.scenario import ShopBackend
from tests.conftest import Restartable

CATALOG = demo_catalog()
PARSER = ChineseCommandParser(CATALOG)


def _cart(text: str, sku: str) -> list[tuple[str, int]]:
    product = CATALOG.product(sku)
    assert product is not None
    return [(line.product.sku, line.qty) for line in PARSER.parse(resolve(text, product, "zh-CN"))]


# the reference agent: Chinese deictic words ---------------------------------------------------------


@pytest.mark.parametrize(
    ("said", "sku", "cart"),
    [
        ("帮我买两个这个", "bat-aa-4", [("bat-aa-4", 2)]),  # 个 for a pack: two of what is seen
        ("买这个", "bat-aa-4", [("bat-aa-4", 1)]),
        ("这些", "masks-50", [("masks-50", 1)]),
        ("帮我买这款", "earbuds-wireless", [("earbuds-wireless", 1)]),
        ("我想要这种", "bat-aa-4", [("bat-aa-4", 1)]),
        ("帮我买这瓶", "milk-1l", [("milk-1l", 1)]),
        ("来两瓶这个", "milk-1l", [("milk-1l", 2)]),
        ("这两包", "bat-aa-4", [("bat-aa-4", 2)]),
        ("我要这俩", "masks-50", [("masks-50", 2)]),
        ("这个来三包", "bat-aa-4", [("bat-aa-4", 3)]),
        ("这个买两个吧", "milk-1l", [("milk-1l", 2)]),
        ("把这个买了", "bat-aa-4", [("bat-aa-4", 1)]),
        ("两个这个和一瓶牛奶", "bat-aa-4", [("bat-aa-4", 2), ("milk-1l", 1)]),
        ("给我来个那个", "umbrella-compact", [("umbrella-compact", 1)]),
        ("一瓶牛奶", "bat-aa-4", [("milk-1l", 1)]),  # the words name the product themselves
    ],
)
def test_chinese_deictic_words_are_what_the_photo_shows(said: str, sku: str, cart: list[tuple[str, int]]) -> None:
    assert _cart(said, sku) == cart


@pytest.mark.parametrize(
    ("said", "sku", "code"),
    [
        ("帮我买这瓶", "bat-aa-4", ErrorCode.NOT_UNDERSTOOD),  # batteries come in packs, not bottles
        ("这个来两包", "milk-1l", ErrorCode.NOT_UNDERSTOOD),
        ("两瓶这包", "milk-1l", ErrorCode.ITEM_NOT_FOUND),  # two measure words that disagree: not read
        ("买一万个这个", "bat-aa-4", ErrorCode.QUANTITY_OUT_OF_RANGE),
    ],
)
def test_a_deictic_that_does_not_fit_the_product_is_refused(said: str, sku: str, code: ErrorCode) -> None:
    with pytest.raises(AgentError) as refused:
        _cart(said, sku)
    assert refused.value.code == code


def test_english_deictic_words_still_name_the_product_and_the_default_ask_is_the_locales() -> None:
    batteries = CATALOG.product("bat-aa-4")
    assert batteries is not None
    assert resolve("buy two of these", batteries, "en-US") == "buy two double a batteries"
    assert has_deictic("帮我买两个这个", "zh-CN") and not has_deictic("帮我买两包五号电池", "zh-CN")
    assert (default_ask("en-US"), default_ask("zh-CN")) == ("buy this", "帮我买这个")
    assert _cart(default_ask("zh-CN"), "bat-aa-4") == [("bat-aa-4", 1)]


@pytest.mark.parametrize(
    ("text", "zh", "en"),
    [
        ("帮我买两包五号电池", True, False),
        ("买一个LED灯泡和两根Type-C线", True, False),  # Latin letters inside Chinese: still Chinese
        ("Type-C线两根", True, False),
        ("buy two packs of AA batteries", False, True),
        ("buy 五号电池", True, False),
        ("2", False, False),
    ],
)
def test_a_locale_knows_the_text_written_in_it(text: str, zh: bool, en: bool) -> None:
    assert (locale_for("zh-CN").writes(text), locale_for("en-US").writes(text)) == (zh, en)


# glasses ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_zh_glasses_order_what_the_wearer_looks_at_from_a_chinese_card(tmp_path: Path) -> None:
    png = tmp_path / "lens.png"
    demo = await run_glasses(locale="zh-CN", png=png)
    run = demo.run
    assert run.said == "帮我买两个这个" and run.offer is not None and run.card is not None
    proposal = run.offer.request.proposal
    assert proposal.locale == "zh-CN"
    assert [(line.sku, line.qty, line.unit) for line in proposal.lines] == [("bat-aa-4", 2, "包")]
    assert run.card.text == compose_lens_card(proposal)
    assert run.card.text.splitlines() == [
        "确认订单", "2 x 五号电池，四节装 | 25.80 元", "  来自家居直供",
        "合计 25.80 元", "付给家居直供", "轻点确认，滑动取消",
    ]  # fmt: skip
    assert run.decision is Decision.CONFIRM and run.result is not None and run.result.outcome is Outcome.ORDERED
    assert demo.orders == 1 and demo.as_dict()["locale"] == "zh-CN"
    claims = unverified_claims(run.mandate or "")
    assert claims is not None and claims["modality"] == "lens_tap" and claims["display_digest"] == run.card.digest
    with Image.open(png) as image:  # the lens drew the card (a CJK font): not a blank screen
        assert image.size == LENS_SIZE and image.convert("L").getextrema()[1] > 100


@pytest.mark.timeout(90)
async def test_zh_glasses_swipe_orders_nothing() -> None:
    demo = await run_glasses("帮我买这个", locale="zh-CN", tap="cancel")
    assert demo.run.decision is Decision.DECLINE and demo.run.mandate is None and demo.orders == 0


@pytest.mark.timeout(180)
async def test_zh_glasses_hear_the_wearer_say_it_in_chinese() -> None:
    """The natural Mandarin voice says it into the glasses' microphone, over the virtual BLE link;
    Whisper hears it in Chinese."""
    demo = await run_glasses("这个来三包", locale="zh-CN", voice=True)
    run = demo.run
    assert run.heard == "这个来三包"
    assert run.offer is not None and [(line.sku, line.qty) for line in run.offer.request.proposal.lines] == [
        ("bat-aa-4", 3)
    ]
    assert run.result is not None and run.result.outcome is Outcome.ORDERED and demo.orders == 1


@pytest.mark.timeout(150)
async def test_firmware_bridge_carries_zh_glasses_that_declare_their_locale(mosquitto: Any, tmp_path: Path) -> None:
    """`firmware-bridge run --simulated --locale zh-CN` as its own process: the glasses declare zh-CN
    in device.info, a tap on the blank lens asks 帮我买这个 (one of what the photo shows), and the tap
    on the Chinese card orders."""
    key = SigningKey.generate()
    key.save(tmp_path / "glasses.key")
    async with ShopBackend(mosquitto.url, shared=None) as shop:
        shop.enroll("glasses-1", key, DeviceKind.GLASSES)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firmware_bridge", "run", "--simulated", "--broker", str(mosquitto.url),
            "--key", str(tmp_path / "glasses.key"), "--sessions", "1", "--json", "--locale", "zh-CN",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, err.decode()
        sessions = [json.loads(line) for line in out.decode().splitlines()]
        assert [s["outcome"] for s in sessions] == ["ordered"]
        assert shop.gateway.locales.get("glasses-1") == "zh-CN"
        assert [(order.total_minor, order.currency) for order in shop.checkout.orders] == [(1290, "CNY")]


# phone -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["bus", "http"])
async def test_zh_phone_orders_from_a_chinese_intent_on_a_chinese_sheet(via: str) -> None:
    demo = await run_phone(locale="zh-CN", via=via)  # type: ignore[arg-type]
    result = demo.result
    assert result.outcome is Outcome.ORDERED and result.order_id and demo.orders == 1
    assert demo.mandate_modality == "phone_sheet"
    assert demo.sheet is not None and demo.sheet.splitlines() == [
        "确认购买", "付款给家居直供", "2 x 五号电池，四节装（家居直供）25.80 元", "合计 25.80 元", "[取消]  [确认]",
    ]  # fmt: skip


async def test_zh_phone_orders_two_of_what_its_photo_shows() -> None:
    demo = await run_phone(locale="zh-CN", photo="milk-1l", via="http")
    assert demo.result.outcome is Outcome.ORDERED and demo.orders == 1
    assert demo.sheet is not None and demo.sheet.splitlines()[2] == "2 x 全脂牛奶，1升（鲜生超市）25.00 元"


async def test_zh_this_with_no_photo_is_not_understood_never_a_guess() -> None:
    demo = await run_phone("帮我买两个这个", locale="zh-CN", via="http")
    assert demo.result.code is ErrorCode.NOT_UNDERSTOOD and demo.orders == 0 and demo.sheet is None


@dataclass
class Rig:
    phone: SimulatedPhone
    bridge: IntentBridge
    shop: ShopBackend

    async def post(self, body: str) -> tuple[int, IntentResult]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{self.bridge.port}/v1/intents", data=body.encode()) as response,
        ):
            message = decode(await response.read())
        assert isinstance(message, IntentResult)
        return response.status, message


@contextlib.asynccontextmanager
async def _rig(url: Any, locale: str) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        shop = await stack.enter_async_context(ShopBackend(url))
        phone = SimulatedPhone("phone-1", shop.provision("phone-1", DeviceKind.PHONE), SigningKey.generate())
        device = await stack.enter_async_context(DeviceClient(url, "phone-1", kind=DeviceKind.PHONE, locale=locale))
        verifier = IntentVerifier(OemKeys([(phone.oem_id, phone.oem_key.public)]))
        bridge = await stack.enter_async_context(IntentBridge(device, verifier, phone, listen=("127.0.0.1", 0)))
        yield Rig(phone, bridge, shop)


@pytest.mark.parametrize(
    ("declared", "refused", "taken"),
    [
        (
            "zh-CN",
            [("buy two packs of AA batteries", "en-US"), ("buy two packs of AA batteries", "zh-CN"),
             ("帮我买两包五号电池", "en-US")],
            ("帮我买两包五号电池", "zh-CN"),
        ),
        (
            "en-US",
            [("帮我买两包五号电池", "zh-CN"), ("帮我买两包五号电池", "en-US"),
             ("buy two packs of AA batteries", "zh-CN")],
            ("buy two packs of AA batteries", "en-GB"),
        ),
    ],
)  # fmt: skip
async def test_a_phone_refuses_an_intent_in_another_language_than_it_declared(
    embedded: Restartable, declared: str, refused: list[tuple[str, str]], taken: tuple[str, str]
) -> None:
    async with _rig(embedded.url, declared) as rig:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{rig.bridge.port}/v1/device") as response,
        ):
            info = decode(await response.read())
        assert info.locale == (None if declared == "en-US" else declared)  # type: ignore[union-attr]
        for query, tag in refused:
            status, result = await rig.post(rig.phone.intent(query, locale=tag))
            assert (status, result.code) == (422, ErrorCode.UNSUPPORTED_LOCALE), (query, tag)
            assert result.outcome is None and result.order_id is None and result.intent_id is not None
        assert rig.shop.gateway.sessions == {}  # nothing was asked of the agent: no cart at all
        assert rig.shop.checkout.orders == [] and rig.phone.shown == []
        status, result = await rig.post(rig.phone.intent(taken[0], locale=taken[1]))  # nothing lost
        assert status == 200 and result.outcome is Outcome.ORDERED
        assert len(rig.shop.checkout.orders) == 1 and rig.phone.shown[0].startswith(
            "确认购买\n" if declared == "zh-CN" else "Confirm purchase\n"
        )


@pytest.mark.timeout(120)
def test_simulate_zh_phone_and_glasses_on_the_command_line(tmp_path: Path) -> None:
    phone = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "simulate", "phone", "--locale", "zh-CN", "--via", "http", "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert phone.returncode == 0, phone.stderr
    report = json.loads(phone.stdout)
    assert report["outcome"] == "ordered" and report["orders"] == 1
    assert report["sheet"].splitlines()[:3] == [
        "确认购买",
        "付款给家居直供",
        "2 x 五号电池，四节装（家居直供）25.80 元",
    ]
    glasses = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "simulate", "glasses", "--locale", "zh-CN", "--png",
         str(tmp_path / "lens.png")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert glasses.returncode == 0, glasses.stderr
    assert (
        "帮我买两个这个" in glasses.stdout and "  确认订单\n" in glasses.stdout and "outcome: ordered" in glasses.stdout
    )
    assert (tmp_path / "lens.png").is_file()
