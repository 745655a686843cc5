"""The rule for a name the SDK shows or says to a user (products, sellers, merchants, units): one
line of visible text in NFC, that cannot pass for a price or split the lens card's columns.

`shown_name` composes the name (NFC, so a decomposed "é" is the one character the hash and the
display digests are taken over) and refuses, with the reason, a name that holds:

- a character that is not plain visible text: control (C0, C1), format (zero-width, bidi
  overrides, soft hyphen), private use, lone surrogates, unassigned code points and
  noncharacters (U+FFFF), line and paragraph separators, any space other than U+0020;
- an invisible character of another category (U+3164 and the other Hangul fillers, U+2800,
  variation selectors, combining grapheme joiner), or a combining mark with nothing to sit on;
- no visible character at all;
- a vertical bar (`|` or a look-alike): ` | ` separates a lens card row from its amount;
- an amount: a number next to a currency sign (`¥`, `$`), an ISO 4217 code (`CNY`) or a currency
  word (`元`, `yuan`), as in "0.01 CNY": only the SDK writes amounts, from the minor units.
"""

from __future__ import annotations

import re
import unicodedata

_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible format character (zero-width, bidi override)",
    "Co": "a private-use character",
    "Cs": "a lone surrogate",
    "Cn": "an unassigned code point or noncharacter",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)
"""Invisible or blank characters that are not format characters: combining grapheme joiner, Hangul
fillers, Khmer inherent vowels, Mongolian variation selectors, braille blank, variation selectors."""
BARS = frozenset("|\u00a6\u01c0\u05c0\u2223\u2502\u2503\u2758\u23d0\uff5c\uffe8")
"""`|` and the characters that look like it."""
_ISO_4217 = """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
    BZD CAD CDF CHF CLP CNH CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
    GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW
    KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN
    NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK
    SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU
    UZS VES VND VUV WST XAF XCD XOF XPF YER ZAR ZMW ZWL RMB"""
"""The currency codes in use (and RMB), as a price would name them."""
_CURRENCY_CODES = frozenset(_ISO_4217.split())
_CURRENCY_WORDS = frozenset({"yuan", "rmb", "dollar", "dollars", "euro", "euros"})
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_BEFORE = re.compile(r"(?:(?<![A-Za-z])([A-Za-z]+)|(\S))\s?$")
_AFTER = re.compile(r"^\s?(?:([A-Za-z]+)(?![A-Za-z])|(\S))")
_YUAN = frozenset("元圆圓")


def shown_name(value: str) -> str:
    """`value` in NFC, or `ValueError` saying why it cannot be shown to a user as a name."""
    name = unicodedata.normalize("NFC", value)
    for index, char in enumerate(name):
        what = _CATEGORIES.get(unicodedata.category(char))
        if what is None and char in _INVISIBLE:
            what = "an invisible character"
        elif what is None and char.isspace() and char != " ":
            what = "a space other than U+0020"
        elif what is None and unicodedata.category(char)[0] == "M" and (index == 0 or name[index - 1] == " "):
            what = "a combining mark with nothing to sit on"
        elif what is None and char in BARS:
            what = "a vertical bar, which separates the lens card's amount column"
        if what is not None:
            raise ValueError(f"character U+{ord(char):04X} is {what}: not allowed in a name")
    if not name.strip():
        raise ValueError("a name must have a visible character")
    amount = price_in(name)
    if amount is not None:
        raise ValueError(f"{amount!r} reads as a price: only the SDK writes amounts, not allowed in a name")
    return name


def price_in(name: str) -> str | None:
    """The first amount in `name` (a number next to a currency sign, code or word), or None."""
    for number in _NUMBER.finditer(name):
        start, end = number.span()
        before, after = _BEFORE.search(name[:start]), _AFTER.search(name[end:])
        if before is not None and _is_currency(before):
            return name[before.start() : end]
        if after is not None and _is_currency(after):
            return name[start : end + after.end()]
    return None


def _is_currency(side: re.Match[str]) -> bool:
    word, char = side.group(1), side.group(2)
    if word is not None:
        return word in _CURRENCY_CODES or word.lower() in _CURRENCY_WORDS
    return unicodedata.category(char) == "Sc" or char in _YUAN
