"""A second locale, zh-CN, typed end to end: the device's locale on its requests and in the audit
log, the reference agent reading Chinese commands against the catalog's zh-CN names, the read-back,
lens card and phone sheet in Chinese, Chinese replies judged by exact phrase, and bad input refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.consent.lens import LensCard
from device_sdk.consent.readback import compose_lens_card, compose_phone_sheet, compose_readback, format_amount
from device_sdk.device.client import DeviceClient
from device_sdk.locale import LOCALES, locale_for
from device_sdk.platform.checkout.audit import trail
from device_sdk.protocol.errors import AgentError, ErrorCode, ProtocolError, RemoteError
from device_sdk.protocol.fields import Decision, Outcome
from device_sdk.protocol.messages import AgentRequest
from device_sdk.voice.replies import interpret_reply
from simulators.agent_core import CatalogAgent
from simulators.catalog import demo_catalog
from simulators.command_parser_zh import ChineseCommandParser, chinese_number
from simulators.phone_demo import run_phone
from simulators.scenario import ShopBackend, run_demo
from simulators.voice_eval import run_eval

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def parser() -> ChineseCommandParser:
    return ChineseCommandParser(demo_catalog())


def cart(parser: ChineseCommandParser, text: str) -> list[tuple[str, int]]:
    return sorted((line.product.sku, line.qty) for line in parser.parse(text))


@pytest.mark.parametrize(
    ("numeral", "value"),
    [("一", 1), ("两", 2), ("十", 10), ("十二", 12), ("二十", 20), ("二十五", 25), ("一百零五", 105), ("一万", 10000),
     ("7", 7)],
)  # fmt: skip
def test_chinese_numerals(numeral: str, value: int) -> None:
    assert chinese_number(numeral) == value


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("帮我买两包五号电池和一瓶牛奶", [("bat-aa-4", 2), ("milk-1l", 1)]),
        ("买包袜子", [("socks-5", 1)]),  # a dropped 一
        ("来俩充电宝", [("power-bank-10k", 2)]),  # 俩: two, measure word included
        ("我要买十二卷垃圾袋吧", [("trash-bags-50", 12)]),
        ("买一瓶牛奶、两袋咖啡豆，再加一副耳机", [("coffee-beans-500", 2), ("earbuds-wireless", 1), ("milk-1l", 1)]),
        ("买一袋狗粮跟两袋猫粮以及一盒绿茶", [("food-cat-2kg", 2), ("food-dog-3kg", 1), ("tea-green-100", 1)]),
        ("帮我买六盒LED灯泡", [("bulb-led-4", 6)]),  # names with Latin letters
        ("我要买十根 Type-C 线", [("cable-usbc-1m", 10)]),
        ("我想买ＡＡ电池", [("bat-aa-4", 1)]),  # full-width letters
        ("一打鸡蛋", [("eggs-12", 1)]),  # the measure word is the product's own name
        ("买一个手机", [("smartphone-pro", 1)]),  # 个 for an item sold by the piece
        ("买两包袜子和一包袜子", [("socks-5", 3)]),  # the same product merged
    ],
)
def test_chinese_commands_become_catalog_lines(parser: ChineseCommandParser, command: str, expected: list) -> None:  # type: ignore[type-arg]
    assert cart(parser, command) == sorted(expected)


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ("买一万包电池", ErrorCode.QUANTITY_OUT_OF_RANGE),
        ("买零包袜子", ErrorCode.QUANTITY_OUT_OF_RANGE),
        ("买六十包袜子和五十包袜子", ErrorCode.QUANTITY_OUT_OF_RANGE),
        ("两个口罩", ErrorCode.NOT_UNDERSTOOD),  # masks come in boxes: not two boxes
        ("买三双袜子", ErrorCode.NOT_UNDERSTOOD),
        ("买一台拉鸡蛋机", ErrorCode.ITEM_NOT_FOUND),
        ("帮我买", ErrorCode.NOT_UNDERSTOOD),
        ("buy two packs of socks", ErrorCode.ITEM_NOT_FOUND),  # English to a zh-CN agent
    ],
)
def test_what_is_not_understood_is_refused_never_guessed(parser: ChineseCommandParser, command: str, code: str) -> None:
    with pytest.raises(AgentError) as refused:
        parser.parse(command)
    assert refused.value.code == code


async def test_the_agent_proposes_in_the_requests_locale() -> None:
    agent = CatalogAgent()
    request = AgentRequest(request_id="r1", device_id="d1", session_id="s1", text="帮我买两包五号电池", locale="zh-CN")
    proposal = await agent.propose(request)
    line = proposal.lines[0]
    assert (line.name, line.unit, line.seller.name, proposal.locale) == ("五号电池，四节装", "包", "家居直供", "zh-CN")
    english = await agent.propose(AgentRequest(request_id="r2", device_id="d1", session_id="s1", text="buy socks"))
    assert english.locale is None and english.lines[0].name == "Cotton socks, 5 pairs"  # en-US bytes unchanged
    with pytest.raises(AgentError):
        await agent.propose(request.model_copy(update={"locale": "ja-JP"}))
    british = await agent.propose(request.model_copy(update={"text": "buy socks", "locale": "en-GB"}))
    assert british.locale is None and british.lines[0].sku == "socks-5"  # any English: the en-US read-back
    hans = await agent.propose(request.model_copy(update={"locale": "zh-Hans-CN"}))
    assert hans.locale == "zh-CN" and hans.lines[0].unit == "包"


async def test_read_back_card_and_sheet_are_composed_in_chinese() -> None:
    agent = CatalogAgent()
    request = AgentRequest(request_id="r1", device_id="d1", session_id="s1", text="帮我买两包五号电池和一瓶牛奶",
                           locale="zh-CN")  # fmt: skip
    proposal = await agent.propose(request)
    assert compose_readback(proposal) == (
        "请确认您的订单。2包五号电池，四节装，来自家居直供，25.80 元。1瓶全脂牛奶，1升，来自鲜生超市，12.50 元。"
        "合计 38.30 元，付给购物助手商城。说“确认”下单，或说“取消”。"
    )
    assert compose_lens_card(proposal).splitlines()[0] == "确认订单"
    sheet = compose_phone_sheet(proposal).splitlines()
    assert sheet[0] == "确认购买" and sheet[-1] == "[取消]  [确认]" and "合计 38.30 元" in sheet
    assert format_amount(3830, "CNY", "zh-CN") == "38.30 元" and format_amount(3830, "USD", "zh-CN") == "38.30 USD"
    with pytest.raises(ProtocolError) as no_glyph:  # Pillow's default font alone has no CJK: never boxes
        LensCard.for_proposal(proposal).render(fonts=())
    assert no_glyph.value.code == ErrorCode.DISPLAY_MISMATCH and "五" in no_glyph.value.text


@pytest.mark.parametrize(
    ("reply", "decision"),
    [("确认", Decision.CONFIRM), ("是的，确认。", Decision.CONFIRM), ("确认下单", Decision.CONFIRM),
     ("好的 确认", Decision.CONFIRM), ("下单吧", Decision.CONFIRM), ("取消", Decision.DECLINE),
     ("不要了", Decision.DECLINE), ("算了吧", Decision.DECLINE),
     # near misses: negated, questioned or hedged accepts hold an accept word and are no accept
     ("不确认", None), ("先不确认", None), ("别确认", None), ("确认一下价格", None), ("确定吗？", None),
     ("不确定", None), ("不是的", None), ("放首歌", None), ("confirm", None)],
)  # fmt: skip
def test_chinese_replies_are_exact_phrases(reply: str, decision: Decision | None) -> None:
    assert interpret_reply(reply, "zh-CN") is decision


def test_every_locale_has_its_data_and_an_unknown_one_is_refused() -> None:
    for tag in LOCALES:
        data = locale_for(tag)
        assert data.tag == tag and data.replies.accept and not data.replies.accept & data.replies.decline
    with pytest.raises(ProtocolError) as unknown:
        DeviceClient("mqtt://127.0.0.1:1", "speaker-x", locale="xx-XX")
    assert unknown.value.code == ErrorCode.UNSUPPORTED_LOCALE


async def test_a_chinese_speaker_orders_typed_and_the_audit_log_names_its_locale(tmp_path: Path) -> None:
    demo = await run_demo(locale="zh-CN", say="帮我买两包五号电池", replies=["确认"], audit=tmp_path / "shop.db")
    assert demo.run.result is not None and demo.run.result.outcome is Outcome.ORDERED
    assert demo.run.offer is not None and demo.run.offer.readback.startswith("请确认您的订单。2包五号电池")
    records = trail(tmp_path / "shop.db", demo.run.offer.session_id)
    assert next(r for r in records if r["kind"] == "proposal")["locale"] == "zh-CN"


async def test_a_reply_in_the_other_language_confirms_nothing() -> None:
    demo = await run_demo(locale="zh-CN", say="帮我买两包五号电池", replies=["confirm", "yes"])
    assert demo.run.result is not None and demo.run.result.outcome is Outcome.NOT_CONFIRMED and demo.orders_placed == 0


async def test_a_chinese_phone_intent_shows_a_chinese_sheet() -> None:
    demo = await run_phone("帮我买两包五号电池", locale="zh-CN", via="http")
    assert demo.result.outcome is Outcome.ORDERED and demo.orders == 1
    assert demo.sheet is not None and demo.sheet.splitlines()[:2] == ["确认购买", "付款给家居直供"]


async def test_a_request_in_a_language_the_device_did_not_declare_is_refused() -> None:
    async with EmbeddedBroker() as broker, ShopBackend(broker.url, shared=False) as shop:
        key = shop.provision("speaker-j")
        async with DeviceClient(broker.url, "speaker-j", key=key) as device:  # declares en-US
            for _ in range(100):  # the gateway has read its retained device.info
                if shop.gateway.locales.get("speaker-j"):
                    break
                await asyncio.sleep(0.02)
            assert shop.gateway.locales["speaker-j"] == "en-US"
            with pytest.raises(RemoteError) as refused:
                await device.ask("帮我买两包五号电池", locale="zh-CN")
            assert refused.value.code == ErrorCode.UNSUPPORTED_LOCALE
            with pytest.raises(RemoteError) as unknown:
                await device.ask("buy socks", locale="ja-JP")
            assert unknown.value.code == ErrorCode.UNSUPPORTED_LOCALE
            british = await device.ask("buy a pack of socks", locale="en-GB")  # the same language
            assert british.request.proposal.lines[0].sku == "socks-5"
    assert shop.checkout.orders == []


@pytest.mark.parametrize("cases", ["voice-public-zh.jsonl", "voice-variants-zh.jsonl"])
async def test_typed_chinese_cases_meet_the_targets(cases: str) -> None:
    report = (await run_eval(DATA / cases, text=True)).as_dict()
    assert report["false_confirmations"] == 0
    assert report["single_task_success"] >= 0.95 and report["multi_task_success"] >= 0.85, report
    assert report["by_locale"]["zh-CN"]["cases"] == report["cases"]
