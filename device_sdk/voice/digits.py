"""A spoken PIN as digits: what a recogniser wrote for "one two three four" or "幺二三四" read as
`"1234"`, and the grammar that steers pocketsphinx to digit words.

- English: the digit words, "zero" / "oh" / "o" for 0, "double" and "triple" before a digit
  ("double four" is 44), digits as written ("1 2 3 4", "1234", "12-34"), and where every word of
  the utterance is a digit or a filler ("my pin is"), the words a free recogniser writes for
  digits it heard: "to" / "too" for 2, "for" for 4, "won" for 1, "ate" for 8.
- Chinese: 〇 / 零 / ○ for 0, 一 and 幺 for 1, 二 and 两 for 2, 三 ... 九 (and 拐 for 7, 勾 for 9,
  as digits are read out over a bad line), Arabic and full-width digits, fillers ("我的密码是").

Anything else in the utterance ("I want to buy four") means it was not a PIN: `parse_pin` gives
None and nothing is sent, so a misheard sentence costs the user no try. A PIN is 4 to 12 digits.
"""

from __future__ import annotations

import re
import unicodedata

from .grammar import Grammar, build_grammar, words_of
from .replies import DECLINE_PHRASES

PIN_LENGTHS = range(4, 13)
"""A PIN's length, as the platform sets it."""
EN_DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
EN_HOMOPHONES = {"to": "2", "too": "2", "for": "4", "won": "1", "ate": "8"}
EN_REPEATS = {"double": 2, "triple": 3}
EN_FILLERS = frozenset(
    {"my", "pin", "is", "it", "it's", "its", "the", "code", "number", "uh", "um", "er", "erm", "and", "ok", "okay"}
)
ZH_DIGITS = {
    "〇": "0", "零": "0", "○": "0", "一": "1", "幺": "1", "二": "2", "两": "2", "三": "3", "四": "4",
    "五": "5", "六": "6", "七": "7", "拐": "7", "八": "8", "九": "9", "勾": "9",
}  # fmt: skip
ZH_FILLERS = ("我的", "密码是", "密码", "是", "嗯", "呃", "那个", "就是")
_EN_WORD = re.compile(r"[a-z']+|[0-9]+")
_EN_NOT_WORD = re.compile(r"[^a-z0-9' ]+")
_ZH_NOT_WORD = re.compile(r"[\W_]+")


def spoken_digits(text: str, language: str = "en") -> str | None:
    """The digits `text` says, in order, or None when it says something besides digits and fillers
    (or no digit at all). `language` is the locale's (`en`, `zh`)."""
    if not isinstance(text, str):
        return None
    text = unicodedata.normalize("NFKC", text).lower()  # full-width digits are digits
    digits = _zh_digits(text) if language == "zh" else _en_digits(text)
    return digits or None


def parse_pin(text: str, language: str = "en") -> str | None:
    """The PIN `text` says (4 to 12 digits), or None when it is not one."""
    digits = spoken_digits(text, language)
    return digits if digits is not None and len(digits) in PIN_LENGTHS else None


def _en_digits(text: str) -> str | None:
    words = _EN_WORD.findall(_EN_NOT_WORD.sub(" ", text.replace("-", " ")))
    digits: list[str] = []
    repeat = 1
    for word in words:
        if word.isdigit():
            digits.append(word * repeat if len(word) == 1 else word)
            repeat = 1
        elif word in EN_DIGITS or word in EN_HOMOPHONES:
            digits.append((EN_DIGITS.get(word) or EN_HOMOPHONES[word]) * repeat)
            repeat = 1
        elif word in EN_REPEATS and repeat == 1:
            repeat = EN_REPEATS[word]
        elif word not in EN_FILLERS:
            return None
    return None if repeat != 1 else "".join(digits)


def _zh_digits(text: str) -> str | None:
    for filler in ZH_FILLERS:
        text = text.replace(filler, "")
    text = _ZH_NOT_WORD.sub("", text)
    digits = []
    for char in text:
        if char.isdigit() and char.isascii():
            digits.append(char)
        elif char in ZH_DIGITS:
            digits.append(ZH_DIGITS[char])
        else:
            return None
    return "".join(digits)


def pin_grammar() -> Grammar:
    """Digit words, one or more, or a decline ("cancel"), or the garbage loop for anything else: the
    grammar pocketsphinx hears a spoken PIN on."""
    words = sorted(set(EN_DIGITS) - {"o"})
    rules = [
        "public <pin> = <digit>+ | <decline> | <other>;",
        f"<digit> = {' | '.join(words)};",
        f"<decline> = {' | '.join(sorted(' '.join(words_of(phrase)) for phrase in DECLINE_PHRASES))};",
    ]
    return build_grammar("pin", rules, [*words, *DECLINE_PHRASES], garbage=True)
