"""Spoken Chinese as Whisper writes it: sound-alike product names and numerals matched by pinyin,
Latin letters by the syllables said for them, and whatever is not clearly one product refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_sdk.protocol.errors import AgentError, ErrorCode
from simulators.catalog import Catalog, demo_catalog
from simulators.command_parser_zh import ChineseCommandParser, fold
from simulators.pinyin_match import (
    MARGIN,
    Near,
    clear_winner,
    distance,
    has_latin,
    heard_numeral,
    sounds,
    syllable_cost,
)

DATA = Path(__file__).parent / "data"
PARSER = ChineseCommandParser(demo_catalog())
CASES = [json.loads(line) for name in ("voice-public-zh.jsonl", "voice-variants-zh.jsonl")
         for line in (DATA / name).read_text(encoding="utf-8").splitlines()]  # fmt: skip


def cart(text: str, parser: ChineseCommandParser = PARSER) -> list[tuple[str, int]]:
    return sorted((line.product.sku, line.qty) for line in parser.parse(text))


def refusal(text: str, parser: ChineseCommandParser = PARSER) -> AgentError:
    with pytest.raises(AgentError) as refused:
        parser.parse(text)
    return refused.value


def catalog_names() -> set[str]:
    return {
        fold(name)
        for product in demo_catalog().products
        for name in (product.named("zh-CN").name, *product.named("zh-CN").aliases)
    }


@pytest.mark.parametrize(
    ("heard", "expected"),
    [
        ("我要买一包棉花", [("socks-5", 1)]),  # 棉袜
        ("买包棉花", [("socks-5", 1)]),
        ("帮我买一组三奶", [("yogurt-4", 1)]),  # 酸奶
        ("买三奶", [("yogurt-4", 1)]),  # 三 straight before the item: part of the name, not three
        ("帮我买两卷拉鸡蛋", [("trash-bags-50", 2)]),  # 垃圾袋, not eggs
        ("买拉鸡蛋", [("trash-bags-50", 1)]),
        ("我要买诶诶电池", [("bat-aa-4", 1)]),  # AA电池
        ("我要买诶诶诶电池", [("bat-aaa-4", 1)]),  # AAA电池: the letters counted
        ("来两包欸欸电池", [("bat-aa-4", 2)]),  # 欸 read ei, not its usual ai
        ("买两包诶 诶电池", [("bat-aa-4", 2)]),  # sound-alikes with a space
        ("买 A A 电池", [("bat-aa-4", 1)]),  # the letters with spaces
        ("帮我买两盒艾利迪灯泡", [("bulb-led-4", 2)]),  # LED灯泡, its E swallowed
        ("来三根太普西线", [("cable-usbc-1m", 3)]),  # Type-C线: "type" said as a word
        ("买一瓶维生素西", [("vitamin-c-60", 1)]),  # 维生素C
        ("买两包五号电吃", [("bat-aa-4", 2)]),
        ("买衣包袜子", [("socks-5", 1)]),  # 一 heard as 衣
        ("买散盒口罩", [("masks-50", 3)]),  # 三 heard as 散
        ("买五号电池", [("bat-aa-4", 1)]),  # not five of "号电池"
        ("帮我买两卷拉鸡蛋和一组三奶", [("trash-bags-50", 2), ("yogurt-4", 1)]),
    ],
)
def test_misheard_names_are_matched_by_pinyin(heard: str, expected: list[tuple[str, int]]) -> None:
    assert cart(heard) == sorted(expected)


def test_the_sound_alikes_are_not_catalog_names() -> None:
    """The cases above reach the pinyin path: none of them is a name the exact path knows."""
    assert not {"棉花", "三奶", "拉鸡蛋", "诶诶电池", "艾利迪灯泡", "太普西线"} & catalog_names()
    assert {"鸡蛋", "aa电池", "aaa电池"} <= catalog_names()


@pytest.mark.parametrize(
    ("heard", "code"),
    [
        ("放首歌", ErrorCode.ITEM_NOT_FOUND),  # unrelated phrases
        ("明天天气怎么样", ErrorCode.ITEM_NOT_FOUND),
        ("买一号电池", ErrorCode.NOT_UNDERSTOOD),  # as near 五号 as 七号: asked again, not guessed
        ("买两盒拉鸡蛋", ErrorCode.NOT_UNDERSTOOD),  # 垃圾袋 comes in rolls; never eggs in boxes
        ("买一盒来鸡蛋", ErrorCode.NOT_UNDERSTOOD),  # 鸡蛋 only with 来 taken off; the whole sounds like 垃圾袋
        ("买一盒皮蛋", ErrorCode.ITEM_NOT_FOUND),  # another initial: another product, not eggs
        ("买一袋密", ErrorCode.ITEM_NOT_FOUND),  # one syllable: 米 only when written 米
        ("买一条毛巾", ErrorCode.ITEM_NOT_FOUND),  # other things that sound a little like a product:
        ("买块橡皮", ErrorCode.ITEM_NOT_FOUND),  # not 墨镜, 香米, 红酒, 口罩, 香米 or 手机
        ("买两瓶黄酒", ErrorCode.ITEM_NOT_FOUND),
        ("买个口哨", ErrorCode.ITEM_NOT_FOUND),
        ("买一袋小米", ErrorCode.ITEM_NOT_FOUND),
        ("买个订书机", ErrorCode.ITEM_NOT_FOUND),
        ("买一瓶维生素D", ErrorCode.ITEM_NOT_FOUND),  # another letter is another product
        ("买三号电池", ErrorCode.ITEM_NOT_FOUND),
        ("买是包袜子", ErrorCode.ITEM_NOT_FOUND),  # 是 is not taken for 十
        ("买一台拉鸡蛋机", ErrorCode.ITEM_NOT_FOUND),
        ("我要买五号电池两包以及七号电池一包", ErrorCode.ITEM_NOT_FOUND),  # near a name is not a name
        ("buy two packs of socks", ErrorCode.ITEM_NOT_FOUND),
    ],
)
def test_what_is_not_clearly_one_product_is_refused(heard: str, code: ErrorCode) -> None:
    assert refusal(heard).code == code


def test_a_refusal_between_two_products_names_both() -> None:
    assert {"五号电池", "七号电池"} <= set(refusal("买一号电池").text.replace("还是", " ").replace("是", " ").split())


def test_two_products_that_sound_the_same_are_refused_and_typed_names_still_work() -> None:
    both = Catalog.model_validate(
        {
            "version": 1,
            "currency": "CNY",
            "merchants": [{"id": "m", "name": "M"}],
            "products": [
                {"sku": sku, "name": sku, "price_minor": 100, "merchant_id": "m", "category": "fresh",
                 "locales": {"zh-CN": {"name": name, "unit": "斤"}}}
                for sku, name in (("pear", "梨子"), ("plum", "李子"))
            ],
        }
    )  # fmt: skip
    parser = ChineseCommandParser(both)
    assert cart("买一斤梨子", parser) == [("pear", 1)] and cart("买两斤李子", parser) == [("plum", 2)]
    assert refusal("买一斤栗子", parser).code == ErrorCode.NOT_UNDERSTOOD  # li zi: both, equally


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_typed_commands_read_as_before(case: dict[str, object]) -> None:
    expected = sorted((item["sku"], item["qty"]) for item in case["expect"])  # type: ignore[attr-defined]
    if case["expect_outcome"] == "not_understood":
        refused = refusal(str(case["command"])).code
        assert refused in (ErrorCode.NOT_UNDERSTOOD, ErrorCode.ITEM_NOT_FOUND, ErrorCode.QUANTITY_OUT_OF_RANGE)
    else:
        assert cart(str(case["command"])) == expected


def test_every_catalog_name_typed_is_its_own_product() -> None:
    for product in demo_catalog().products:
        for alias in product.named("zh-CN").aliases:
            assert cart(f"买{alias}") == [(product.sku, 1)], alias


def test_latin_letters_sound_as_a_mandarin_speaker_says_them() -> None:
    (aa,) = sounds(fold("AA电池"))
    (heard,) = sounds("诶诶电池", heard=True)
    (aaa,) = sounds(fold("AAA电池"))
    assert distance(heard, aa) == 0.0 and distance(heard, aaa) >= MARGIN
    assert len(aaa) == len(aa) + 1
    assert [p.readings[0] for p in sounds(fold("Type-C线"))[0]] == [("t", "ai"), ("p", "u"), ("x", "i"), ("x", "ian")]
    assert len(sounds(fold("LED灯泡"))) == 2  # L: ai le or ai lu


def test_usual_merges_cost_less_than_other_sounds() -> None:
    shi, si, ji = ("sh", "i"), ("s", "i"), ("j", "i")
    assert syllable_cost(shi, shi) == 0.0
    assert 0 < syllable_cost(shi, si) < syllable_cost(("zh", "i"), shi) < syllable_cost(ji, shi)
    assert syllable_cost(("", "an"), ("", "ang")) < syllable_cost(("", "an"), ("", "ai"))


@pytest.mark.parametrize(("text", "latin"), [("AA电池", True), ("ＬＥＤ灯泡", True), ("Type-C线", True),
                                             ("五号电池，四节装", False), ("诶诶电池", False)])  # fmt: skip
def test_has_latin(text: str, latin: bool) -> None:
    assert has_latin(text) is latin


@pytest.mark.parametrize(("char", "value"), [("衣", 1), ("散", 3), ("午", 5), ("是", None), ("包", None), ("A", None),
                                             ("", None)])  # fmt: skip
def test_heard_numeral(char: str, value: int | None) -> None:
    assert heard_numeral(char) == value


def test_a_winner_must_be_near_and_clearly_nearest() -> None:
    assert clear_winner([Near("a", 0.0, "x"), Near("b", 0.2, "x")]) == Near("a", 0.0, "x")
    assert clear_winner([Near("a", 0.1, "x"), Near("b", 0.15, "x")]) is None  # too close to call
    assert clear_winner([Near("a", 0.5, "x")]) is None  # too far
    assert clear_winner([]) is None


@pytest.mark.parametrize(
    ("heard", "expected"),
    [
        ("帮我买两核绿茶", [("tea-green-100", 2)]),  # 盒 written 核
        ("帮我买五代方便面", [("noodles-5", 5)]),  # 袋 written 代
        ("买一副太阳尽和两只牙膏", [("sunglasses", 1), ("toothpaste-120", 2)]),  # 只 said as 支
        ("买3T出房纸金和一袋狗粮", [("food-dog-3kg", 1), ("paper-towels-6", 3)]),  # 提 heard as the letter T
        ("帮我买物和口罩", [("masks-50", 5)]),  # 五盒 written 物和: not "物" and "口罩"
        ("我要买时跟type系线", [("cable-usbc-1m", 10)]),  # 十根 written 时跟
        ("给我来平洗化水。", [("shampoo-400", 1)]),  # 瓶 written 平, with 一 dropped
        ("买两充电保", [("power-bank-10k", 2)]),  # 俩 heard as 两, no measure word
        ("帮我定十二卷拉鸡蛋", [("trash-bags-50", 12)]),  # 订 written 定
        ("卖两盒鸡蛋", [("eggs-12", 2)]),  # 买 written 卖: the same syllable
        ("买一瓶牛奶 两袋咖啡豆", [("coffee-beans-500", 2), ("milk-1l", 1)]),  # a pause written as a space
        ("来两题抽只合一箱矿泉水吧", [("tissues-10", 2), ("water-24", 1)]),  # 和 written 合
    ],
)
def test_what_whisper_writes_for_spoken_commands_reads_as_said(heard: str, expected: list[tuple[str, int]]) -> None:
    assert cart(heard) == sorted(expected)


@pytest.mark.parametrize(
    "heard",
    ["两件拉鸡蛋", "买两个口罩", "买三份笔记本合一组孙奶", "买两匹厨房纸巾"],
)
def test_a_measure_word_that_does_not_sound_like_the_product_s_is_still_refused(heard: str) -> None:
    assert refusal(heard).code in (ErrorCode.NOT_UNDERSTOOD, ErrorCode.ITEM_NOT_FOUND)
