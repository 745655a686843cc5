"""Turns a Chinese shopping command into catalog lines: "帮我买两包五号电池和一瓶牛奶".

Quantities in Chinese numerals or digits (一 两 俩 三 … 十 十二 二十五, 2), a measure word (包 瓶 袋
盒 个 …), the product by its zh-CN name or alias; no spaces; several items joined by 和, 还有,
再加, 跟, 以及, 另外 or a comma. A dropped 一 ("买包袜子") is one; 俩 is two. What is not understood is
reported, never guessed: a measure word that is not the product's ("两个口罩" when masks come in
boxes) is refused rather than read as two boxes (个 stands for any item sold by the piece, and a
measure word in the product's own name counts: 一打鸡蛋), and so is a quantity over 99 ("一万包").

A spoken command arrives as Whisper wrote it, with sound-alikes (棉花 for 棉袜, 拉鸡蛋 for 垃圾袋, 诶诶电池
for AA电池, 衣包 for 一包). When no name matches exactly, the item span is matched as a whole by its
pinyin (`pinyin_match`), and taken only when one product is near and clearly nearer than the rest.
"""

from __future__ import annotations

import re

from device_sdk.protocol.errors import AgentError, ErrorCode

from .catalog import Catalog, Product
from .command_parser import MAX_QTY, ParsedLine
from .pinyin_match import SoundMatcher, clear_winner, heard_numeral, sayings

LOCALE = "zh-CN"
_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_POWERS = {"十": 10, "百": 100, "千": 1000, "万": 10_000}
_NUMBER = re.compile(r"^(?:\d+|[零〇一二两三四五六七八九十百千万]+)")
MEASURE_WORDS = frozenset("个只支瓶包袋盒箱提卷根双副本把张台份组听罐条件套打杯块斤")
"""Measure words people put between a number and a product; each product has its own (`unit`)."""
LEADS = (
    "麻烦帮我买", "请帮我买", "帮我下单", "帮我订", "帮我买", "给我买", "我想要买", "我想买", "我要买", "我需要",
    "我想要", "我要", "再来", "给我来", "来", "再买", "买", "请", "帮我", "下单", "订", "要", "再",
    "帮我卖", "我要卖", "我想卖", "帮我定", "卖", "定",
)  # fmt: skip
"""What people say before the items; longer first (each is stripped while one matches). 卖 and 定 are
how Whisper writes 买 (mai) and 订 (ding) said: the same syllables."""
TRAILS = ("谢谢你", "谢谢", "就行了", "就好", "吧", "了", "呀", "啊", "哦", "呢")
CONNECTORS = re.compile(r"还有|再加上|再加|以及|另外|加上|然后|和|跟|与|及|[,，、;；]")
_NOT_TEXT = re.compile(r"[\s\-_·.。!！?？\"'“”‘’()（）]+")


def fold(text: str, pauses: bool = True) -> str:
    """Lower case, full-width forms narrowed, spaces, hyphens and punctuation dropped ("Type-C线" ->
    "typec线"), separators kept; with `pauses`, a space between Chinese words is one (Whisper writes
    a pause so: "一瓶牛奶 两袋咖啡豆")."""
    narrowed = "".join(chr(ord(c) - 0xFEE0) if "\uff01" <= c <= "\uff5e" and c not in "，；" else c for c in text)
    narrowed = narrowed.lower()
    return _NOT_TEXT.sub("", _PAUSE.sub("，", narrowed) if pauses else narrowed)


_PAUSE = re.compile(r"(?<=[\u4e00-\u9fff])\s+(?=[\u4e00-\u9fff])")


def chinese_number(text: str) -> int:
    """ "两" -> 2, "十二" -> 12, "二十五" -> 25, "一万" -> 10000, "12" -> 12."""
    if text.isdigit():
        return int(text)
    total = section = digit = 0
    for char in text:
        if char in _DIGITS:
            digit = _DIGITS[char]
        elif char == "万":
            total += (section + digit) * 10_000
            section = digit = 0
        else:
            section += (digit or 1) * _POWERS[char]
            digit = 0
    return total + section + digit


class ChineseCommandParser:
    """Parses zh-CN commands against the catalog's zh-CN names and aliases."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        names: dict[str, Product] = {}
        for product in catalog.products:
            local = product.named(LOCALE)
            for name in (local.name, local.name.split("，")[0], *local.aliases):
                names.setdefault(fold(name), product)
        self._names = sorted(names.items(), key=lambda item: len(item[0]), reverse=True)
        self._products = {product.sku: product for product in catalog.products}
        self._initials = frozenset(name[:1] for name in names)
        self._sounds = SoundMatcher((name, product.sku) for name, product in names.items())

    def parse(self, text: str) -> list[ParsedLine]:
        """The lines of `text`, or `AgentError` (`not_understood`, `item_not_found`,
        `quantity_out_of_range`) naming what could not be read. A space between Chinese words
        separates items, unless only the words joined read (诶 诶电池: AA电池 spelt as said)."""
        try:
            return self._parse(fold(text))
        except AgentError:
            joined = fold(text, pauses=False)
            if joined == fold(text):
                raise
            try:
                return self._parse(joined)
            except AgentError:
                pass
            raise

    def _parse(self, folded: str) -> list[ParsedLine]:
        folded = _strip_ends(folded)
        if not folded or folded in LEADS:
            raise AgentError("没有听到要买的东西", ErrorCode.NOT_UNDERSTOOD)
        lines: dict[str, ParsedLine] = {}
        for parsed in (line for segment in _segments(folded) for line in self._lines(segment)):
            earlier = lines.get(parsed.product.sku)
            qty = parsed.qty + (earlier.qty if earlier else 0)
            if qty > MAX_QTY:
                raise AgentError(f"最多买 {MAX_QTY} 件", ErrorCode.QUANTITY_OUT_OF_RANGE)
            lines[parsed.product.sku] = ParsedLine(parsed.product, qty)
        return list(lines.values())

    def _lines(self, segment: str) -> list[ParsedLine]:
        """The one item of a segment; or, when it reads as none, the items it holds if what sounds
        like 和 (合, 河, 喝: how Whisper writes it) joins them: every one of them must read."""
        try:
            return [self._segment(_strip_ends(segment))]
        except AgentError as unread:
            parts = [part for part in _HEARD_AND.split(segment) if part]
            if len(parts) < 2:
                raise
            try:
                return [self._segment(_strip_ends(part)) for part in parts]
            except AgentError:
                raise unread from None

    def _segment(self, segment: str) -> ParsedLine:
        qty, rest = 1, segment
        if segment.startswith("俩"):
            qty, rest = 2, segment[1:]
        elif number := _NUMBER.match(segment):
            qty, rest = chinese_number(number.group()), segment[number.end() :]
        if qty < 1 or qty > MAX_QTY:
            raise AgentError(f"数量 {qty} 超出范围（1 到 {MAX_QTY}）", ErrorCode.QUANTITY_OUT_OF_RANGE)
        product, measure = self._named(rest)
        if product is None:
            qty, product, measure = self._heard(segment, qty, rest)
        if measure is not None and not _sold_by(product, measure):
            local = product.named(LOCALE)
            raise AgentError(f"{local.name}按“{local.unit}”卖，不按“{measure}”", ErrorCode.NOT_UNDERSTOOD)
        return ParsedLine(product, qty)

    def _named(self, rest: str) -> tuple[Product | None, str | None]:
        """The product `rest` names exactly, and the measure word before it if one was taken off."""
        product = self._product(rest)
        if product is None and rest[:1] in MEASURE_WORDS:
            return self._product(rest[1:]), rest[0]
        return product, None

    def _product(self, rest: str) -> Product | None:
        """The product `rest` names exactly (an alias or its name), the longest first. A name found
        only by taking a lead or trail off (来鸡蛋) is refused when the whole span sounds as near
        another product (垃圾袋)."""
        whole, rest = rest, _strip_ends(rest)
        product = next((product for name, product in self._names if rest == name), None)
        if product is not None and rest != whole:
            ranked = self._sounds.nearest(whole)
            mine = next((near.distance for near in ranked if near.item == product.sku), 1.0)
            if any(near.item != product.sku and near.distance <= mine for near in ranked):
                raise AgentError(f"听不清“{whole}”是哪件商品", ErrorCode.NOT_UNDERSTOOD)
        return product

    def _heard(self, segment: str, qty: int, rest: str) -> tuple[int, Product, str | None]:
        """The quantity, product and measure word the segment sounds like, its item span matched as a
        whole in pinyin: only a product near enough and clearly nearer than any other is taken."""
        readings: dict[str, tuple[int, str | None]] = {}
        for n, span, measure in _readings(segment, qty, rest, self._initials):
            readings.setdefault(span, (n, measure))
        ranked = self._sounds.nearest(*readings)
        winner = clear_winner(ranked)
        if winner is None:
            if ranked and ranked[0].near:
                names = "还是".join(self._products[near.item].named(LOCALE).name.split("，")[0] for near in ranked[:2])
                raise AgentError(f"听不清“{segment}”是{names}", ErrorCode.NOT_UNDERSTOOD)
            raise AgentError(f"找不到“{segment}”", ErrorCode.ITEM_NOT_FOUND)
        qty, measure = readings[winner.heard]
        if measure is None and qty > 1 and winner.distance > _BARE_COUNT_DISTANCE:
            raise AgentError(f"找不到“{segment}”", ErrorCode.ITEM_NOT_FOUND)  # 两匹厨房纸巾: what is 匹?
        return qty, self._products[winner.item], measure


def _readings(segment: str, qty: int, rest: str, initials: frozenset[str]) -> list[tuple[int, str, str | None]]:
    """The ways a segment that names no product exactly may split into quantity, item span and
    measure word. A measure word stays in the span only where a name starts with it (瓶装水). A
    numeral straight before the item, with no measure word, is read as part of its name (一号电池,
    三奶 for 酸奶); a character that sounds like a numeral before a measure word is one (衣包袜子)."""
    readings: list[tuple[int, str, str | None]]
    if rest[:1] in MEASURE_WORDS:
        readings = [(qty, rest[1:], rest[0])] + ([(qty, rest, None)] if rest[0] in initials else [])
    elif rest != segment and not segment.startswith(("俩", "两")):  # 俩 said is written 两
        readings = [(1, segment, None)]
    else:
        readings = [(qty, rest, None)]
    if rest[:1] not in MEASURE_WORDS and _heard_measure(rest[:1]):
        readings.append((qty, rest[1:], rest[0]))  # 两核绿茶, 来平洗发水: a measure word heard as its sound-alike
    if rest == segment and (heard := heard_numeral(segment[:1])) and _heard_measure(segment[1:2]):
        readings.append((heard, segment[2:], segment[1]))
    return readings


_BARE_COUNT_DISTANCE = 0.1
"""How near a name heard after a count with no measure word (俩充电宝, written 两充电保) must be: a
syllable more in its place (两匹厨房纸巾) may be a measure word no one sells it by."""


def _heard_measure(char: str) -> bool:
    """A measure word, or what sounds like one (核 for 盒, 代 for 袋, T for 提)."""
    return char in MEASURE_WORDS or bool(sayings(char) & _MEASURE_SAYINGS)


_MEASURE_SAYINGS = frozenset(syllable for measure in MEASURE_WORDS for syllable in sayings(measure))
_SPLIT = re.compile(f"({CONNECTORS.pattern})")
_HEARD_AND = re.compile("[合河喝何荷]")


def _segments(folded: str) -> list[str]:
    """The items of a command, split at its connectors; where Whisper wrote a measure word as a
    connector that sounds like it (五盒口罩 -> 物和口罩, 十根 -> 时跟), a bare numeral before it is
    joined again with what follows."""
    parts = _SPLIT.split(folded)
    segments: list[str] = []
    at = 0
    while at < len(parts):
        segment = parts[at]
        if at + 2 < len(parts) and parts[at + 2] and _bare_numeral(segment) and _heard_measure(parts[at + 1]):
            segment, at = segment + parts[at + 1] + parts[at + 2], at + 2
        if segment:
            segments.append(segment)
        at += 2
    return segments


def _bare_numeral(segment: str) -> bool:
    segment = _strip_ends(segment)
    return bool(_NUMBER.fullmatch(segment)) or (len(segment) == 1 and heard_numeral(segment) is not None)


def _sold_by(product: Product, measure: str) -> bool:
    """Whether "<qty><measure><product>" asks for that many of the product as sold: its own measure
    word, one its name holds ("一打" in 鸡蛋，一打), 个 for an item sold by the piece, or a word said
    as its own is (只 for 支; 核 as Whisper writes 盒)."""
    local = product.named(LOCALE)
    if measure == local.unit or f"一{measure}" in local.name or (measure == "个" and product.unit == "piece"):
        return True
    return bool(sayings(measure) & sayings(local.unit))  # said the same: 核 or 和 for 盒, 只 for 支


def _strip_ends(text: str) -> str:
    changed = True
    while changed and text:
        changed = False
        for lead in LEADS:
            if text.startswith(lead) and len(text) > len(lead):
                text, changed = text[len(lead) :], True
                break
        for trail in TRAILS:
            if text.endswith(trail) and len(text) > len(trail):
                text, changed = text[: -len(trail)], True
                break
    return text
