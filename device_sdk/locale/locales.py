"""The locale data files, read once and checked: `locale_for("zh-CN")`."""

from __future__ import annotations

import json
import re
from functools import cache
from importlib.resources import files
from typing import Literal

from pydantic import BaseModel, ConfigDict

from device_sdk.protocol.errors import ErrorCode, ProtocolError

DEFAULT_LOCALE = "en-US"


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReadbackText(_Data):
    title: str
    line: str
    """`{qty}`, `{unit}`, `{name}`, `{seller}`, `{amount}`."""
    total: str
    """`{total}`, `{payee}`."""
    answer: str
    sponsored: str
    """`{line}`: a sponsored line as said, its disclosure first ("Sponsored: ...", "广告：...")."""
    unclear: str
    """Said before the answer prompt again when a reply was neither an accept nor a decline."""
    join: str

    @property
    def reprompt(self) -> str:
        return self.join.join((self.unclear, self.answer))


class LensText(_Data):
    title: str
    line: str
    seller: str
    total: str
    payee: str
    answer: str
    sponsored: str
    """The row shown above a sponsored item ("[Sponsored]", "[广告]")."""
    ask: str
    """What the glasses ask for when the wearer says nothing: one of what they look at."""


class SheetText(_Data):
    title: str
    payee: str
    line: str
    total: str
    actions: str
    sponsored: str
    """The row shown above a sponsored item ("[Sponsored]", "[广告]")."""


class VoiceText(_Data):
    """How a voice device speaks and hears the locale, and what it says besides the read-back."""

    espeak: str
    """The espeak-ng voice a device speaks with (`en-us`, `cmn-latn-pinyin`)."""
    hearing: Literal["hybrid", "whisper"]
    """`hybrid`: pocketsphinx's grammars with Whisper beside them (a language pocketsphinx has a
    model of); `whisper`: Whisper alone in the locale's `language`, for commands and replies."""
    ask_again: str
    press_to_confirm: str
    sent_to_phone: str
    not_found: str
    cancelled: str
    step_up: str
    not_allowed: str
    not_placed: str
    say_pin: str
    """Asks for the step-up PIN (an offer over the voice cap); the user's answer follows it."""
    pin_unheard: str
    """Asks again after an answer that was not 4 to 12 digits (nothing was sent)."""
    pin_wrong: str
    """Asks again after the platform said the PIN was wrong."""
    pin_locked: str


class SuggestionText(_Data):
    """What a device says of an agent-initiated suggestion, and the phrases that turn them off."""

    intro: str
    """`{text}`: the suggestion, said as one ("A suggestion from your shopping assistant: ...")."""
    reorder: str
    """`{qty}`, `{unit}`, `{name}`: a reorder of something bought before."""
    stopped: str
    """Said once the user turned suggestions off on the device."""
    stop: frozenset[str]
    """Replies (normalised) that turn suggestions off on the device ("stop suggestions", "别再推荐了")."""


class ReplyPhrases(_Data):
    accept: frozenset[str]
    decline: frozenset[str]


class Locale(_Data):
    """One locale's data (see the package's docstring)."""

    tag: str
    language: str
    """ISO 639-1, as speech engines take it (`en`, `zh`)."""
    script: str
    """The letters the language is written in, as a regular-expression class (`[A-Za-z]`)."""
    spaced: bool
    """Whether its words are written with spaces between them (en) or not (zh: each letter a word)."""
    currency_names: dict[str, str]
    """How a currency is written after an amount (`CNY` -> `元`); the ISO code when not listed."""
    amount: str
    readback: ReadbackText
    lens: LensText
    sheet: SheetText
    plurals: dict[str, str]
    """Irregular plural units; others take `plural_suffix` (none in a language without plurals)."""
    plural_suffix: str
    replies: ReplyPhrases
    voice: VoiceText
    edge_policy: dict[str, str]
    """What the device says when its own policy refuses an offer, by rule (`max_per_order`, ...)."""
    suggestion: SuggestionText

    def unit(self, unit: str, qty: int) -> str:
        """The unit as said with `qty`: "2 boxes", "2 packs"; "2包" unchanged."""
        if qty == 1 or not self.plural_suffix:
            return unit
        suffix = self.plural_suffix
        return self.plurals.get(unit, unit if unit.endswith(suffix) else unit + suffix)

    def writes(self, text: str) -> bool:
        """Whether `text` is written in the language: at least half of its words are in its
        `script`. A word is a run of letters where words are spaced, a letter where they are not;
        letters of another script count the other way ("Type-C线两根" and "买两包AA电池" are
        Chinese, "buy two packs of AA batteries" and "buy 五号电池" are not)."""
        own = other = 0
        for piece in re.findall(rf"{self.script}+|(?:(?!{self.script})[^\W\d_])+", text):
            if re.match(self.script, piece):
                own += 1 if self.spaced else len(piece)
            else:
                other += len(piece) if self.spaced else 1
        return own > 0 and own >= other

    def normalise_reply(self, text: str) -> str:
        """A reply folded for matching: lower case, punctuation dropped; spaces collapsed where
        words are spaced, dropped where they are not (Chinese)."""
        text = text.lower().replace("\u2019", "'")
        if self.language == "zh":
            return _NOT_WORD_ZH.sub("", text)
        return " ".join(_NOT_WORD.sub(" ", text).split())


_NOT_WORD = re.compile(r"[^a-z0-9' ]+")
_NOT_WORD_ZH = re.compile(r"[\W_]+")
_DATA = files("device_sdk.locale").joinpath("data")
LOCALES = tuple(sorted(entry.name.removesuffix(".json") for entry in _DATA.iterdir() if entry.name.endswith(".json")))
"""The locales with a data file: adding one is adding its file."""


@cache
def locale_for(tag: str) -> Locale:
    """The locale `tag`, or `ProtocolError` (`unsupported_locale`) for one with no data file."""
    if tag not in LOCALES:
        raise ProtocolError(f"no locale {tag!r}: {', '.join(LOCALES)}", ErrorCode.UNSUPPORTED_LOCALE)
    text = _DATA.joinpath(f"{tag}.json").read_text(encoding="utf-8")
    return Locale.model_validate(json.loads(text))
