"""Matches what Whisper wrote for a product against catalog names by how they sound, in pinyin.

Whisper writes a misheard name as a sound-alike (棉袜 -> 棉花, 垃圾袋 -> 拉鸡蛋) and Latin letters as
the syllables a Mandarin speaker says for them (AA电池 -> 诶诶电池, LED灯泡 -> 艾利迪灯泡). Both sides
become syllables: tones dropped, each split into initial and final, letters spelled as spoken
(A -> ei, C -> xi, L -> ai le) and digits read out. Two readings are compared by a syllable edit
distance over the longer one's length, where a near-miss syllable costs less than a wrong one and
the usual merges (zh/z, ch/c, sh/s, l/n, f/h, -ng/-n) cost little. A name is taken only when it is
near (`max_distance`: the shorter the name, the nearer) and clearly nearer than any other item's
(`MARGIN`): a guess is never made. Tones are ignored, so homophones match exactly (被子 is 杯子).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import islice, product
from typing import Generic, NamedTuple, TypeVar

from pypinyin import Style, lazy_pinyin, pinyin
from pypinyin.contrib.tone_convert import to_finals, to_initials

T = TypeVar("T", bound=Hashable)
Syllable = tuple[str, str]
"""(initial, final) of a toneless syllable, as pypinyin splits it strictly: 袜 wa -> ("", "ua")."""


class Position(NamedTuple):
    """One syllable of a reading."""

    readings: tuple[Syllable, ...]
    """What it may be: the reading in context first, then a heard character's other readings (欸: ai,
    then ei), each costing `OTHER_READING` more."""
    letter: bool = False
    """Said for a Latin letter: another consonant is another letter (维生素D is not 维生素C)."""


Sound = tuple[Position, ...]

MARGIN = 0.1
"""How much nearer the chosen item must be than the nearest other item."""
MIN_SYLLABLES = 2
"""Names and heard items shorter than this are matched exactly or not at all (米, 水: too many
characters sound like them)."""
OTHER_READING = 0.1
"""The price of hearing a character by a reading other than its usual one (包 as pao)."""

LETTERS: dict[str, tuple[str, ...]] = {
    "a": ("ei",), "b": ("bi",), "c": ("xi", "sei"), "d": ("di",), "e": ("yi",), "f": ("ai fu",),
    "g": ("ji",), "h": ("ai qi",), "i": ("ai",), "j": ("jie",), "k": ("kai",), "l": ("ai le", "ai lu"),
    "m": ("ai mu",), "n": ("en",), "o": ("ou",), "p": ("pi",), "q": ("qiu",), "r": ("a er",),
    "s": ("ai si",), "t": ("ti",), "u": ("you",), "v": ("wei",), "w": ("da bu liu",),
    "x": ("ai ke si",), "y": ("wai",), "z": ("zei", "zi"),
}  # fmt: skip
"""How a Mandarin speaker says each Latin letter; the first is the most common."""
WORDS: dict[str, tuple[str, ...]] = {"type": ("tai pu",), "pro": ("pu luo",)}
"""Latin words in catalog names that are said as words, not spelled (Type-C线: tai pu xi xian)."""
NUMERALS = {"yi": 1, "er": 2, "liang": 2, "san": 3, "si": 4, "wu": 5, "liu": 6, "qi": 7, "ba": 8, "jiu": 9, "shi": 10}
"""Toneless numeral syllables: a character read so in a quantity's place is that number (衣 -> 1)."""
_NOT_NUMERALS = frozenset("是就以而吧把起其")
"""Words said so often before a measure word that they are not taken for a misheard numeral."""
_DIGITS = ("ling", "yi", "er", "san", "si", "wu", "liu", "qi", "ba", "jiu")
_INITIAL_MERGES = frozenset(frozenset(p) for p in (("zh", "z"), ("ch", "c"), ("sh", "s"), ("l", "n"), ("f", "h")))
_INITIAL_KIN = ({"b", "p", "m", "f"}, {"d", "t", "n", "l"}, {"g", "k", "h"}, {"j", "q", "x"}, {"zh", "ch", "sh", "r"},
                {"z", "c", "s"})  # fmt: skip
"""Initials said at the same place (b/p, zh/sh); a weak h against none (花 hua, 袜 wa) is nearer."""
_FINAL_MERGES = frozenset(frozenset(p) for p in (("an", "ang"), ("en", "eng"), ("in", "ing"), ("ian", "iang"),
                                                 ("uan", "uang")))  # fmt: skip
_RUNS = re.compile(r"[a-z]+|[0-9]+|[\u3400-\u9fff]+")
_LATIN = re.compile(r"[A-Za-z\uff21-\uff3a\uff41-\uff5a]")
_MAX_VARIANTS = 32


def max_distance(syllables: int) -> float:
    """The farthest a heard item may be from a name of this many syllables (or heard in as many)
    and still be taken for it: 0.13 for two (棉花 for 棉袜, not 毛巾 for 墨镜), up to 0.22 from five."""
    return min(0.22, 0.05 + 0.04 * syllables)


def has_latin(text: str) -> bool:
    """Whether `text` holds Latin letters (AA电池, LED灯泡, Type-C线; full-width ones too)."""
    return _LATIN.search(text) is not None


def heard_numeral(char: str) -> int | None:
    """The numeral a character sounds exactly like, tones aside (衣 -> 1, 散 -> 3), or None."""
    if len(char) != 1 or not "\u3400" <= char <= "\u9fff" or char in _NOT_NUMERALS:
        return None
    return NUMERALS.get(lazy_pinyin(char)[0])


def sayings(char: str) -> frozenset[str]:
    """The toneless syllables one character is said as (核 -> he), or a Latin letter that is one
    syllable spoken (T -> ti, C -> xi or sei); empty for anything else."""
    if len(char) != 1:
        return frozenset()
    if _LATIN.fullmatch(char):
        return frozenset(w for w in LETTERS.get(char.lower(), ()) if " " not in w)
    if "\u3400" <= char <= "\u9fff":
        return frozenset(lazy_pinyin(char))
    return frozenset()


@cache
def _syllable(spelled: str) -> Syllable:
    return to_initials(spelled, strict=True), to_finals(spelled, strict=True) or spelled


Chunk = tuple[tuple[Position, ...], ...]
"""A piece of text as its ways of being said (a letter may have two), each a few positions."""


def _chunks(run: str, heard: bool) -> list[Chunk]:
    """A run of letters, digits or characters as chunks: one per letter, word, number or character."""
    if run[0].isdigit():
        return [_said(*_number_readings(run))]
    if run[0].isascii():
        chunks: list[Chunk] = []
        at = 0
        while at < len(run):
            word = next((w for w in WORDS if run.startswith(w, at)), run[at])
            chunks.append(_said(*WORDS[word]) if word in WORDS else _said(*LETTERS[word], letter=True))
            at += len(word)
        return chunks
    usual = [s for said in lazy_pinyin(run, errors=_spaced) for s in said.split()]
    others = pinyin(run, style=Style.NORMAL, heteronym=True, errors=_spaced) if heard else []
    if len(others) != len(usual):  # a catalog name (or a character pypinyin cannot read): as usual
        return [_said(s) for s in usual]
    return [
        ((Position(tuple(_syllable(s) for s in dict.fromkeys((s, *more)))),),)
        for s, more in zip(usual, others, strict=True)
    ]


def _spaced(unread: str) -> str:
    """Characters pypinyin has no reading for, one syllable each (they match only themselves)."""
    return " ".join(unread)


def _said(*ways: str, letter: bool = False) -> Chunk:
    return tuple(tuple(Position((_syllable(s),), letter) for s in way.split()) for way in ways)


def _number_readings(digits: str) -> tuple[str, ...]:
    """ "5" -> wu; "50" -> wu shi or wu ling; "256" -> er wu liu."""
    one_by_one = " ".join(_DIGITS[int(d)] for d in digits)
    if len(digits) != 2:
        return (one_by_one,)
    tens, ones = int(digits[0]), int(digits[1])
    said = ("" if tens == 1 else _DIGITS[tens]) + " shi " + (_DIGITS[ones] if ones else "")
    return (said, one_by_one)


def sounds(text: str, heard: bool = False) -> list[Sound]:
    """The readings of folded `text` (lower case, no spaces): one per way of saying its letters and
    numbers. In a `heard` text a character may also be any of its other readings."""
    chunks = [c for run in _RUNS.findall(text) for c in _chunks(run, heard)]
    return [tuple(p for way in ways for p in way) for ways in islice(product(*chunks), _MAX_VARIANTS)]


@cache
def syllable_cost(a: Syllable, b: Syllable, letter: bool = False) -> float:
    """0 for the same syllable, 0.1 for a usual merge (sh/s, -ng/-n), up to 1 for another one; for
    a `letter`, another consonant is another letter (1)."""
    if a == b:
        return 0.0
    initial = _initial_cost(a[0], b[0])
    return 1.0 if letter and initial > 0.1 else min(1.0, initial + _final_cost(a[1], b[1]))


def _initial_cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    if frozenset((a, b)) in _INITIAL_MERGES:
        return 0.1
    if {a, b} == {"h", ""}:
        return 0.25
    return 0.35 if any(a in kin and b in kin for kin in _INITIAL_KIN) else 0.5


def _final_cost(a: str, b: str) -> float:
    """0.1 for a usual merge, else by letters: an/uan 0.2, an/ai 0.3, i/u 0.6."""
    if a == b:
        return 0.0
    if frozenset((a, b)) in _FINAL_MERGES:
        return 0.1
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return 0.6 * row[-1] / max(len(a), len(b), 1)


def _gap(position: Position) -> float:
    """The price of a syllable heard but not in the name, or the other way: a bare vowel (诶, 一),
    the kind ASR drops or adds, costs less than one with a consonant."""
    return 0.6 if position.readings[0][0] == "" else 1.0


def distance(heard: Sound, name: Sound) -> float:
    """Syllable edit distance over the longer length: a syllable missing or extra costs its `_gap`,
    a syllable for another its `syllable_cost` (the cheapest of a heard position's readings)."""
    row = [0.0]
    for position in name:
        row.append(row[-1] + _gap(position))
    for options in heard:
        gap = _gap(options)
        previous, row[0] = row[0], row[0] + gap
        for j, ((syllable, *_), letter) in enumerate(name, 1):
            letter = letter or options.letter
            swap = min(
                syllable_cost(o, syllable, letter) + (OTHER_READING if k else 0.0)
                for k, o in enumerate(options.readings)
            )
            previous, row[j] = row[j], min(row[j] + gap, row[j - 1] + _gap(name[j - 1]), previous + swap)
    return row[-1] / max(len(heard), len(name), 1)


@dataclass(frozen=True)
class Near(Generic[T]):
    """An item and how far a heard text is from the nearest of its names."""

    item: T
    distance: float
    heard: str
    """The text (of those tried) that came nearest."""
    syllables: int = MIN_SYLLABLES
    """The longer of the heard text and the name, in syllables."""

    @property
    def near(self) -> bool:
        """Whether it is near enough to be taken for the item (`max_distance`)."""
        return self.distance <= max_distance(self.syllables)


class SoundMatcher(Generic[T]):
    """Names, each for an item, ranked by how near they sound to a heard text."""

    def __init__(self, names: Iterable[tuple[str, T]]) -> None:
        self._names = [(sound, item) for name, item in names for sound in sounds(name) if len(sound) >= MIN_SYLLABLES]

    def nearest(self, *texts: str) -> list[Near[T]]:
        """Each item once, at its nearest to any of the folded `texts`, nearest first."""
        best: dict[T, Near[T]] = {}
        for text in texts:
            for heard in sounds(text, heard=True):
                if len(heard) < MIN_SYLLABLES:
                    continue
                for name, item in self._names:
                    far = distance(heard, name)
                    if item not in best or far < best[item].distance:
                        best[item] = Near(item, far, text, max(len(heard), len(name)))
        return sorted(best.values(), key=lambda near: near.distance)


def clear_winner(ranked: Sequence[Near[T]]) -> Near[T] | None:
    """The nearest item when it is near enough and clearly nearer than the next; otherwise None."""
    if not ranked or not ranked[0].near:
        return None
    if len(ranked) > 1 and ranked[1].distance - ranked[0].distance < MARGIN:
        return None
    return ranked[0]
