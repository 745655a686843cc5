"""Turns a shopping command into catalog lines: "buy two packs of AA batteries and a milk".

Quantities as words or digits ("a", "two", "twenty one", "3"), optional units ("two packs
of ..."), product aliases (also the product name before its comma, singular or plural), and
several items joined by "and", "plus", "and also" or commas. What is not understood is
reported, never guessed: a unit that is not the product's ("three bottles of water" when water
comes in cases of 24) is refused rather than read as three cases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from device_sdk.protocol.errors import AgentError, ErrorCode
from device_sdk.voice.grammar import Vocabulary
from device_sdk.voice.grammar import singular as stem

from .catalog import Catalog, Product, demo_catalog

MAX_QTY = 99
_ONES = {
    "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "couple": 2,
}  # fmt: skip
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
UNITS = {
    "pack", "packet", "bottle", "box", "bag", "roll", "piece", "pair", "case", "tube", "bunch", "cup", "can",
    "jar", "carton", "set", "unit", "item", "container", "loaf", "dozen",
}  # fmt: skip
LEADS = (
    "we're out of", "we are out of", "i'm out of", "i am out of", "we ran out of", "i ran out of", "out of",
    "can i get", "can i have", "could i get", "i'll take", "i will take", "let's get", "we need", "pick up",
    "i'd love", "i would love", "grab us", "toss", "throw in",
    "please", "can you", "could you", "would you", "i want to", "i'd like to", "i would like to", "i want",
    "i'd like", "i would like", "i need", "buy me", "order me", "get me", "get us", "buy us", "order us", "buy",
    "order", "reorder", "purchase", "get", "grab", "add", "put", "me", "some", "more", "the", "also", "and",
)  # fmt: skip
"""What people say before the items; longer phrases first (each is stripped while one matches)."""
TRAILS = (
    "to my shopping list", "to my cart", "to the cart", "to cart", "in my cart", "in the cart", "into my cart",
    "to my basket", "to the basket", "in my basket", "in the basket", "into the basket", "to my list",
    "to the list", "on my list", "to my order",
    "for me", "for us", "right now", "right away", "today", "please", "thanks", "thank you",
)  # fmt: skip
CONNECTORS = ("and", "and also", "plus", "as well as")
_CONNECTOR = re.compile(
    r"\s*(?:,|&|" + "|".join(rf"\b{c}\b" for c in sorted(CONNECTORS, key=len, reverse=True)) + r")\s*"
)


def normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("-", " ")
    text = re.sub(r"[^a-z0-9',& ]+", " ", text)
    return " ".join(text.split())


def _key(phrase: str) -> tuple[str, ...]:
    return tuple(stem(w) for w in normalise(phrase).replace(",", " ").split())


@dataclass(frozen=True)
class ParsedLine:
    product: Product
    qty: int


class CommandParser:
    """Matches commands against one catalog; build once, parse many."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._aliases: dict[tuple[str, ...], Product] = {}
        for product in catalog.products:
            names = [*product.aliases, product.name.split(",")[0], product.sku.replace("-", " ")]
            for name in names:
                key = _key(name)
                if key:
                    self._aliases.setdefault(key, product)

    def vocabulary(self, **options: Any) -> Vocabulary:
        """What a command grammar for this agent is built from: every alias and short name, with
        the unit its product is sold by, and the phrases this parser strips around them."""
        spoken = {
            (name, product.unit)
            for product in self.catalog.products
            for name in (*product.aliases, product.name.split(",")[0])
        }
        options = {"leads": LEADS, "trails": TRAILS, "connectors": CONNECTORS, **options}
        return Vocabulary(products=tuple(sorted(spoken)), **options)

    def parse(self, text: str) -> list[ParsedLine]:
        """The lines a command asks for, same products merged; `AgentError` for anything not understood."""
        body = normalise(text)
        if not body:
            raise AgentError("the command is empty", ErrorCode.NOT_UNDERSTOOD)
        merged: dict[str, ParsedLine] = {}
        for segment in _CONNECTOR.split(body):
            words = _strip(segment.split())
            if not words:
                continue
            line = self._segment(words)
            before = merged.get(line.product.sku)
            qty = line.qty + (before.qty if before else 0)
            if qty > MAX_QTY:
                raise AgentError(f"at most {MAX_QTY} of one item per order", ErrorCode.QUANTITY_OUT_OF_RANGE)
            merged[line.product.sku] = ParsedLine(line.product, qty)
        if not merged:
            raise AgentError(f"no item to buy in {text!r}", ErrorCode.NOT_UNDERSTOOD)
        return list(merged.values())

    def _segment(self, words: list[str]) -> ParsedLine:
        """`[quantity] [unit [of]] alias`, trying the readings from most to least specific. A unit
        that is not the product's is refused only when no other reading fits: in "a dozen eggs" the
        unit word is part of the product's own name."""
        wrong_unit: AgentError | None = None
        for qty, used in _quantities(words):
            rest = words[used:]
            candidates: list[tuple[str | None, list[str]]] = [(None, rest)]
            if len(rest) > 1 and stem(rest[0]) in UNITS:
                unit_words = rest[2:] if len(rest) > 2 and rest[1] == "of" else rest[1:]
                candidates.insert(0, (stem(rest[0]), unit_words))
            for unit, candidate in candidates:
                product = self._aliases.get(tuple(stem(w) for w in candidate))
                if product is None:
                    continue
                if unit is not None and unit != product.unit:
                    wrong_unit = wrong_unit or AgentError(
                        f"{product.name} is sold by the {product.unit}, not by the {unit}", ErrorCode.NOT_UNDERSTOOD
                    )
                    continue
                if not 1 <= qty <= MAX_QTY:
                    raise AgentError(f"quantity {qty} is out of range 1-{MAX_QTY}", ErrorCode.QUANTITY_OUT_OF_RANGE)
                return ParsedLine(product, qty)
        if wrong_unit is not None:
            raise wrong_unit
        raise AgentError(f"no product matches {' '.join(words)!r}", ErrorCode.ITEM_NOT_FOUND)


def _strip(words: list[str]) -> list[str]:
    changed = True
    while changed and words:
        changed = False
        for phrase in LEADS:
            p = phrase.split()
            if words[: len(p)] == p and len(words) > len(p):
                words, changed = words[len(p) :], True
                break
        for phrase in TRAILS:
            p = phrase.split()
            if words[-len(p) :] == p and len(words) > len(p):
                words, changed = words[: -len(p)], True
                break
    return words


def _quantities(words: list[str]) -> list[tuple[int, int]]:
    """Possible `(quantity, words used)` readings of the start of `words`, longest first; `(1, 0)` last."""
    readings: list[tuple[int, int]] = []
    first = words[0]
    if first.isdigit():
        readings.append((int(first), 1))
    elif first in _TENS:
        if len(words) > 1 and words[1] in _ONES and _ONES[words[1]] < 10 and words[1] not in ("a", "an"):
            readings.append((_TENS[first] + _ONES[words[1]], 2))
        readings.append((_TENS[first], 1))
    elif first in _ONES:
        if first == "a" and len(words) > 1 and words[1] == "couple":
            readings.append((2, 3 if len(words) > 2 and words[2] == "of" else 2))
        readings.append((_ONES[first], 1))
    readings.append((1, 0))
    return readings


def demo_vocabulary() -> Vocabulary:
    """The reference agent's command words over the demo catalog (entry point `demo` of the group
    `device_sdk.vocabularies`, which `firmware-bridge run --asr sphinx` listens with)."""
    return CommandParser(demo_catalog()).vocabulary()
