"""The decision on a spoken reply, from more than one hearing: a missed answer costs a re-prompt, a
false accept costs an order, so when the hearings do not agree the user is asked again.

Three hearings of the same audio, the last two started beside the first:

- **first**: the reply grammar (accept and decline phrases, and a garbage loop for anything else) on
  pocketsphinx, with the audio checks of `reply_text`. It hears our phrases well, but with a
  natural voice it took "conform", "concern" and "comfort" for "confirm".
- **second**: Whisper, free of any grammar. It writes the word it heard ("conform.", "concern.",
  "Don't confirm.", "Confirmation?") where pocketsphinx is forced onto a phrase, but it garbles
  short clips of real accepts ("Good for him." for "confirm") and now and then writes "Confirm."
  for "conform". Its opinion (`Opinion`): the whole transcript is an accept phrase (`accept`) or a
  decline phrase (`decline`); it holds the first hearing's words (`supports`: "Yes, confirmed." for
  "yes confirm"); it holds a word that is not ours but looks like one of ours ("comfort",
  "conform", "older"), a negation, a question or a word of doubt (`veto`); or none of these
  (`neutral`: garbled).
- **guard**: a forced choice on pocketsphinx between every accept phrase and its near misses
  ("conform", "inform", "concern", "con form", "guess" and "yet" for "yes", "don't confirm", ...).

The decision table (`decide`):

| first | second | guard | decision |
|---|---|---|---|
| decline | not accept | - | decline |
| decline | accept | - | ask again (they contradict) |
| accept | veto or decline | - | ask again |
| "yes" alone | accept or supports | accept | accept |
| "yes" alone | anything else | - | ask again ("guess" and "yet" sound like it) |
| another accept | accept or supports | - | accept |
| another accept | neutral | accept | accept |
| another accept | neutral | rival or none | ask again |
| neither | decline | - | decline |
| neither | accept (not "yes") | accept | accept |
| neither | anything else | - | ask again |
| a stop phrase | not accept | - | decline, and suggestions stop (`Judgement.stop`) |
| a stop phrase | accept | - | ask again |

With no second hearing (`--engine sphinx`) an accept of the first needs the guard; with no guard
either (vosk or Whisper alone, and Whisper in a locale pocketsphinx has no model of: zh-CN) the
first hearing decides, by the locale's exact phrases: "不确认", "确认一下价格" and "确定吗" are none
of them. A stop phrase ("stop suggestions", "别再推荐了": the answer to a suggestion, heard on
`reply_grammar(stop=STOP_PHRASES)` or written by Whisper) is a decline that also turns suggestions off
on the device; it never confirms. Measured on espeak-ng (five voices and
speeds) and a natural voice (Piper): docs/voice.md.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from difflib import SequenceMatcher
from enum import StrEnum
from typing import TypeVar

from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.fields import Decision

from .asr import AsrEngine, transcribe
from .grammar import Grammar, build_grammar, words_of
from .lexicon import english_words
from .replies import ACCEPT_PHRASES, DECLINE_PHRASES, asks_to_stop, interpret_reply, normalise
from .sources import RATE
from .whisper import REPLY_TOKENS, REPLY_WINDOW_S, WhisperEngine

T = TypeVar("T")

NEAR_MISSES: dict[str, tuple[str, ...]] = {
    "confirm": (
        "conform",
        "inform",
        "concern",
        "comfort",
        "con form",
        "can form",
        "confirms",
        "conformed",
        "reform",
        "perform",
    ),
    "yes": ("guess", "yet", "less", "jess", "yeah", "chess", "mess"),
    "place": ("play", "plays", "pace"),
    "order": ("older", "border"),
}
"""Words of the accept phrases and what they are misheard for (no homophones: "by" sounds as "buy")."""
NEGATIONS = ("don't", "do not", "i can't", "i cannot", "not", "never", "i won't", "can you", "should i", "did you")
"""Said before an accept phrase, each makes it a refusal or a question: rivals in the forced choice."""
VERBS = frozenset({"confirm", "buy", "place"})
"""Words of the accept phrases that "don't" can go before inside them ("yes please don't buy it")."""


class Verdict(StrEnum):
    """What the guard's forced choice chose."""

    ACCEPT = "accept"
    RIVAL = "rival"
    NONE = "none"


class Opinion(StrEnum):
    """What Whisper's transcript says of the reply (see the module's table)."""

    ACCEPT = "accept"
    DECLINE = "decline"
    SUPPORTS = "supports"
    NEUTRAL = "neutral"
    VETO = "veto"


DOUBT = frozenset(
    {"not", "don't", "dont", "do", "can't", "cannot", "never", "won't", "no", "but", "later", "maybe", "wait",
     "what", "how", "why", "when", "if", "nothing", "guess", "yet", "less", "yesterday", "unconfirmed",
     "confirmation", "cancel", "stop", "form", "con", "reform", "perform"}
)  # fmt: skip
"""Words in Whisper's transcript that make an accept doubtful: negations, questions, delays, and
the pieces near misses leave ("con form", "can form", "in form")."""
_QUESTION = re.compile(r"\?\s*$")
SHORT_ACCEPTS = frozenset({"yes"})
"""Accept phrases that near misses sound like ("guess", "yet", "less"): every hearing must agree."""
_OURS = ("confirm", "place", "order")
"""The words of the accept phrases that near misses are made from (a garbled "please" is no doubt)."""
_ALSO_OURS = frozenset({*_OURS, "please", "confirmed", "ordered"})
_SAME = {"confirmed": "confirm", "ordered": "order", "yeah": "yes"}
"""What Whisper writes for our words, counted as them when it supports a first hearing."""
_FUNCTION_WORDS = frozenset({"the", "it", "a"})


def _looks_like_ours(word: str) -> bool:
    """An English word that is not one of the accept phrases' but is spelt much like one
    ("comfort", "conform", "concern", "inform" for "confirm"; "border" for "order"): Whisper heard
    another word. Close spellings count; looser ones only with the same first letter ("good" is
    not "order"); a piece of one of ours ("Okay, firm.": "confirm" cut in two) and a string that is
    no word at all ("orrogo": garbled) are no other word."""
    if len(word) < 4 or word in _ALSO_OURS or word not in english_words():
        return False
    for ours in _OURS:
        if word in ours:
            continue
        ratio = SequenceMatcher(None, word, ours).ratio()
        if ratio >= 0.6 or (ratio >= 0.4 and word[0] == ours[0]):
            return True
    return False


def opinion(text: str, first: str) -> Opinion:
    """Whisper's transcript `text` as an opinion on a reply whose first hearing was `first`."""
    if not text.strip():
        return Opinion.NEUTRAL
    said = [_SAME.get(w, w) for w in normalise(text).split()]
    whole = " ".join(said)
    if whole in DECLINE_PHRASES:
        return Opinion.DECLINE
    if _QUESTION.search(text) or any(w in DOUBT or _looks_like_ours(w) for w in said):
        return Opinion.VETO
    if whole in SHORT_ACCEPTS and whole != first:
        return Opinion.NEUTRAL  # a bare "Yes." is what Whisper writes for "guess" and "yet" too
    if whole in ACCEPT_PHRASES:
        return Opinion.ACCEPT
    needed = [w for w in first.split() if w not in _FUNCTION_WORDS]
    if first in ACCEPT_PHRASES and all(w in said for w in needed) and len(said) <= len(first.split()) + 1:
        return Opinion.SUPPORTS
    return Opinion.NEUTRAL


def rival_phrases(accept: str) -> list[str]:
    """The near misses of one accept phrase: each word swapped for each of its near misses, and the
    phrase negated, before it and inside it."""
    words = accept.split()
    rivals = {f"{negation} {accept}" for negation in NEGATIONS}
    rivals |= {" ".join([*words[:i], "don't", *words[i:]]) for i, word in enumerate(words) if i and word in VERBS}
    for i, word in enumerate(words):
        for miss in NEAR_MISSES.get(word, ()):
            rivals.add(" ".join([*words[:i], miss, *words[i + 1 :]]))
    return sorted(rivals - ACCEPT_PHRASES)


def forced_choice_grammar(accept: frozenset[str] = ACCEPT_PHRASES) -> Grammar:
    """Every accept phrase against its rivals and the decline phrases, and nothing else."""
    rivals = sorted({r for phrase in accept for r in rival_phrases(phrase)} | set(DECLINE_PHRASES))
    rules = [
        "public <choice> = <accept> | <rival>;",
        f"<accept> = {' | '.join(sorted(' '.join(words_of(p)) for p in accept))};",
        f"<rival> = {' | '.join(' '.join(words_of(r)) for r in rivals)};",
    ]
    return build_grammar("choice", rules, [*accept, *rivals], garbage=False)


@dataclass(frozen=True)
class Judgement:
    """A reply's decision (None: ask again) and the hearings it came from."""

    decision: Decision | None
    row: str
    """Which row of the decision table decided."""
    first: str
    second: str | None = None
    opinion: Opinion | None = None
    guard: Verdict | None = None
    asr_seconds: float = 0.0
    """Decode seconds of the second hearing and the guard (the first is counted where it ran)."""
    audio_seconds: float = 0.0
    """Seconds of audio they were given."""

    @property
    def stop(self) -> bool:
        """The user asked to stop suggestions (a decline that turns them off on the device)."""
        return self.decision is Decision.DECLINE and self.row == STOPPED


STOPPED = "stop suggestions"
"""The row of the decision table for a stop phrase."""


def decide(
    first: str, second: Opinion | None, guard: Verdict | None, locale: str = DEFAULT_LOCALE
) -> tuple[Decision | None, str]:
    """The decision table of this module: `first` is the first hearing as it counts (`reply_text`),
    `second` Whisper's opinion (None: not asked), `guard` the forced choice (None: no guard);
    `locale` the reply's language (the second hearing and the guard are English only)."""
    if asks_to_stop(first, locale):
        if second is Opinion.ACCEPT:
            return None, "the hearings contradict each other"
        return Decision.DECLINE, STOPPED
    heard = interpret_reply(first, locale)
    phrase = locale_for(locale).normalise_reply(first)
    agrees = second in (Opinion.ACCEPT, Opinion.SUPPORTS)
    if heard is Decision.DECLINE:
        if second is Opinion.ACCEPT:
            return None, "the hearings contradict each other"
        return Decision.DECLINE, "a decline"
    if heard is Decision.CONFIRM:
        if second in (Opinion.VETO, Opinion.DECLINE):
            return None, f"Whisper heard something else ({second})"
        if second is None:
            if guard in (None, Verdict.ACCEPT):
                return Decision.CONFIRM, "an accept" + (" that beat its near misses" if guard else "")
            return None, f"an accept the guard refused ({guard})"
        if phrase in SHORT_ACCEPTS:
            if agrees and guard in (None, Verdict.ACCEPT):
                return Decision.CONFIRM, "a short accept every hearing agreed on"
            return None, "a short accept not every hearing agreed on"
        if agrees:
            return Decision.CONFIRM, "an accept Whisper agreed with"
        if guard is Verdict.ACCEPT:
            return Decision.CONFIRM, "an accept Whisper garbled that beat its near misses"
        return None, f"an accept Whisper did not hear ({guard or 'no guard'})"
    if second is Opinion.DECLINE:
        return Decision.DECLINE, "a decline Whisper heard"
    if second is Opinion.ACCEPT and guard in (Verdict.ACCEPT, Verdict.NONE):
        return Decision.CONFIRM, f"an accept Whisper heard that no near miss beat ({guard})"
    return None, "no accept or decline heard"


@dataclass
class ReplyJudge:
    """Decides a reply from the first hearing, Whisper's (`second`, optional) and the forced choice
    on `guard` (a pocketsphinx engine, optional). The second hearing and the guard start as soon as
    the reply's audio is there, beside the first, so the answer costs about one Whisper decode."""

    second: WhisperEngine | None = None
    guard: AsrEngine | None = None
    locale: str = DEFAULT_LOCALE
    """The language of the replies: a second hearing and a guard judge English only."""

    def __post_init__(self) -> None:
        if self.locale != DEFAULT_LOCALE and (self.second is not None or self.guard is not None):
            raise ConfigError(f"the second hearing and the guard judge en-US replies, not {self.locale}")
        self._choice = forced_choice_grammar()
        if self.second is not None:
            english_words()  # read the dictionary now, not on the first reply

    async def judge(self, pcm: bytes, first: Awaitable[str]) -> Judgement:
        """Decide the reply in `pcm`; `first` gives what the reply grammar heard (`reply_text`)."""
        second = asyncio.create_task(self._timed(self._second, pcm)) if self.second is not None else None
        guard = asyncio.create_task(self._timed(self.choose, pcm)) if self.guard is not None else None
        try:
            first_text = await first
        except BaseException:
            for task in (second, guard):
                if task is not None:
                    task.cancel()
            raise
        second_text, seconds = (await second) if second is not None else (None, 0.0)
        verdict, guard_seconds = (await guard) if guard is not None else (None, 0.0)
        said = opinion(second_text, normalise(first_text)) if second_text is not None else None
        decision, row = decide(first_text, said, verdict, self.locale)
        audio = len(pcm) / 2 / RATE * ((second is not None) + (guard is not None))
        return Judgement(decision, row, first_text, second_text, said, verdict, seconds + guard_seconds, audio)

    def _second(self, pcm: bytes) -> str:
        assert self.second is not None
        return self.second.transcribe(pcm, max_new_tokens=REPLY_TOKENS, window_s=REPLY_WINDOW_S)

    def choose(self, pcm: bytes) -> Verdict:
        """The forced choice: an accept phrase, a rival, or nothing the decoder would settle on."""
        assert self.guard is not None
        chosen = " ".join(transcribe(self.guard, pcm, self._choice).text.split())
        if not chosen:
            return Verdict.NONE
        return Verdict.ACCEPT if chosen in ACCEPT_PHRASES else Verdict.RIVAL

    @staticmethod
    async def _timed(work: Callable[[bytes], T], pcm: bytes) -> tuple[T, float]:
        started = time.perf_counter()
        result = await asyncio.to_thread(work, pcm)
        return result, time.perf_counter() - started
