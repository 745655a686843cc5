"""Recognition grammars: the shopping commands an agent understands, and the replies to a read-back.

The command grammar is generated from the agent's vocabulary (`Vocabulary`: the spoken names of
what it sells, its units, and the words around them), so recognition is steered to what can be
bought: `[lead] item [connector item]... [trail]`, with at most `max_items` items (an unbounded
item loop lets the decoder invent extra items), each `[quantity] [unit [of]] product`.

Both grammars have an out-of-grammar path (`GARBAGE`: a loop over one-phone words, reported as
`[unk]`), so speech that is neither a command nor an answer lands there instead of being forced
onto the nearest phrase: a closed reply grammar heard "buy two packs of double a batteries" as
"confirm the order". The engines' search settings that make the garbage path work travel with the
grammar (`word_penalty`, `silence_prob`); docs/voice.md says how they were chosen.

`Grammar` carries both forms the engines take: JSGF for pocketsphinx, a phrase list for vosk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points

from device_sdk.protocol.errors import ConfigError, ErrorCode, VoiceError

from .replies import ACCEPT_PHRASES, DECLINE_PHRASES

_ONES = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
DEFAULT_LEADS = ("please", "buy", "order", "add", "get", "purchase", "i want", "i need", "i would like", "me", "some")
DEFAULT_VERBS = ("buy", "order", "get", "purchase", "add")
OPENER_ENDS = (" to", " you")
DEFAULT_TRAILS = ("to my cart", "to the cart", "please", "for me", "thanks", "thank you")
DEFAULT_CONNECTORS = ("and", "and also", "plus")
ARPABET = (
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY", "JH", "K",
    "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH",
)  # fmt: skip
GARBAGE = tuple((f"gbg{phone.lower()}", phone) for phone in ARPABET)
"""The out-of-grammar path: a loop over one-phone words, which can match any speech but pays for
every phone, so real words win where they fit (a garbage model)."""
UNKNOWN = "[unk]"
COMMAND_WORD_PENALTY = 0.05
REPLY_WORD_PENALTY = 1e-3
REPLY_SILENCE_PROB = 0.005

_TOKEN = re.compile(r"^[a-z][a-z']*$")


def words_of(phrase: str) -> list[str]:
    """A phrase as grammar tokens: lower case, hyphens and punctuation as spaces."""
    return re.sub(r"[^a-z' ]+", " ", phrase.lower().replace("-", " ")).split()


def plural(word: str) -> str:
    if word.endswith("y") and len(word) > 2 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "ch", "sh", "z")):
        return word + "es"
    return word + "s"


def singular(word: str) -> str:
    """A plural-insensitive form: batteries -> battery, boxes -> box, glasses -> glass, eggs -> egg."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us")):
        return word[:-1]
    return word


def number_words(maximum: int) -> list[str]:
    """Spoken quantities 1..maximum ("a", "one" ... "ninety nine")."""
    spoken = ["a", "an", *_ONES, *_TEENS]
    for tens in _TENS:
        spoken.append(tens)
        spoken.extend(f"{tens} {one}" for one in _ONES)
    return spoken[: maximum + 1]  # "a" and "an" both mean one


def _alternatives(phrases: Iterable[str]) -> str:
    unique = sorted({" ".join(words_of(p)) for p in phrases} - {""})
    if not unique:
        raise VoiceError("a grammar rule with no phrase", ErrorCode.BAD_GRAMMAR)
    return " | ".join(unique)


@dataclass(frozen=True)
class Grammar:
    """One recognition grammar in the forms the engines take."""

    name: str
    jsgf: str
    phrases: tuple[str, ...]
    """Whole phrases or single words for vosk's runtime grammar (with `[unk]` for the rest)."""
    words: frozenset[str]
    lexicon: tuple[tuple[str, str], ...] = ()
    """Pronunciations the grammar brings along: the garbage model's one-phone words."""
    garbage: frozenset[str] = frozenset()
    """Words of the out-of-grammar path; a recogniser reports them as `[unk]`, as vosk does."""
    word_penalty: float | None = None
    """Word insertion probability for engines that take one (pocketsphinx's `wip`): low for
    replies, where the garbage loop must pay for every phone, higher for commands, which are
    long and must not be cut short."""
    silence_prob: float | None = None
    """Silence insertion probability (pocketsphinx's `silprob`): near zero for replies, so the
    decoder cannot call the end of "yes confirm" silence and keep only "yes"."""


@dataclass(frozen=True)
class Vocabulary:
    """What an agent's commands are made of: the spoken names of its products, each with the unit
    it is sold by, and the phrases around them. The reference agent builds one from its catalog
    (`CommandParser.vocabulary`).

    A unit goes only with the products sold by it ("two rolls of trash bags", never "two tubes of
    trash bags"): a unit that fits any product lets the decoder hear "two" as "tube".
    """

    products: tuple[tuple[str, str | None], ...]
    """(spoken name, unit or None) pairs."""
    leads: tuple[str, ...] = DEFAULT_LEADS
    """What may come before the items ("buy", "i need"). A lead ending in "to" or "you" ("i
    would like to", "can you") is an opener and takes a verb after it ("i would like to buy"):
    "i would like to" alone let the decoder hear "i would like two tubes" as "to tubes"."""
    verbs: tuple[str, ...] = DEFAULT_VERBS
    """The words a lead that follows an opener starts with."""
    trails: tuple[str, ...] = DEFAULT_TRAILS
    connectors: tuple[str, ...] = DEFAULT_CONNECTORS
    max_items: int = 3
    max_quantity: int = 99

    def __post_init__(self) -> None:
        if not self.products:
            raise VoiceError("a vocabulary needs at least one product name", ErrorCode.BAD_GRAMMAR)
        if not 1 <= self.max_items <= 10 or not 1 <= self.max_quantity <= 99:
            raise VoiceError("max_items is 1 to 10 and max_quantity 1 to 99", ErrorCode.BAD_GRAMMAR)

    def names_by_unit(self) -> dict[str | None, list[str]]:
        """Each name as given, and with its last word in the singular and the plural, by unit; names
        written with digits are left to their spoken aliases ("A5 notebook": "a five notebook")."""
        grouped: dict[str | None, set[str]] = {}
        for name, unit in self.products:
            words = words_of(name)
            if not words or any(c.isdigit() for c in name):
                continue
            last = words[-1]
            for form in {last, singular(last), plural(singular(last))}:
                grouped.setdefault(unit, set()).add(" ".join([*words[:-1], form]))
        return {unit: sorted(names) for unit, names in grouped.items()}

    def command_grammar(self, *, out_of_grammar: bool = True) -> Grammar:
        """The command grammar; with `out_of_grammar`, speech that is no command can take the
        garbage loop instead of being forced onto the nearest order."""
        groups = self.names_by_unit()
        rules: list[str] = []
        choices: list[str] = []
        for i, (unit, names) in enumerate(sorted(groups.items(), key=lambda kv: kv[0] or "")):
            rules.append(f"<product{i}> = {_alternatives(names)};")
            choices.append(f"<product{i}>")
            if unit:
                unit_words = words_of(unit)
                forms = {unit} if unit_words[-1] == "dozen" else {unit, plural(unit)}
                rules.append(f"<unit{i}> = {_alternatives(forms)};")
                choices.append(f"<unit{i}> [of] <product{i}>")
        items = "<item>" + " [<connector> <item>" * (self.max_items - 1) + "]" * (self.max_items - 1)
        leads = [lead for lead in self.leads if lead != "please" and not lead.endswith(OPENER_ENDS)]
        openers = [lead for lead in self.leads if lead.endswith(OPENER_ENDS)]
        verbs = [lead for lead in leads if words_of(lead)[0] in self.verbs]
        lead_rule = "<lead>" + (" | <opener> <verb>" if openers and verbs else "")
        request = f"[please] [{lead_rule}] {items} [<trail>]" if leads else f"[please] {items} [<trail>]"
        rules[:0] = [
            f"public <command> = ({request}) | <other>;" if out_of_grammar else f"public <command> = {request};",
            f"<item> = [<quantity>] ({' | '.join(choices)});",
            f"<quantity> = {_alternatives(number_words(self.max_quantity))};",
            *([f"<lead> = {_alternatives(leads)};"] if leads else []),
            *(
                [f"<opener> = {_alternatives(openers)};", f"<verb> = {_alternatives(verbs)};"]
                if openers and verbs
                else []
            ),
            f"<trail> = {_alternatives(self.trails)};",
            f"<connector> = {_alternatives(self.connectors)};",
        ]
        phrases = [
            *(name for names in groups.values() for name in names),
            *(form for unit in groups if unit for form in (unit, plural(unit))),
            *number_words(self.max_quantity),
            "please",
            *self.leads,
            *self.trails,
            *self.connectors,
            "of",
        ]
        return build_grammar("command", rules, phrases, garbage=out_of_grammar, word_penalty=COMMAND_WORD_PENALTY)


def reply_grammar(
    accept: Iterable[str] = ACCEPT_PHRASES,
    decline: Iterable[str] = DECLINE_PHRASES,
    stop: Iterable[str] = (),
) -> Grammar:
    """Accept and decline phrases, and the garbage loop for anything else; for the answer to a
    suggestion, also the phrases that turn suggestions off (`stop=STOP_PHRASES`), so "stop
    suggestions" is heard whole rather than as "stop" and garbage."""
    stop = list(stop)
    choices = "<accept> | <decline>" + (" | <stop>" if stop else "")
    rules = [
        f"public <reply> = [<other>] ({choices}) [<other>] | <other>;",
        f"<accept> = {_alternatives(accept)};",
        f"<decline> = {_alternatives(decline)};",
        *([f"<stop> = {_alternatives(stop)};"] if stop else []),
    ]
    return build_grammar(
        "reply",
        rules,
        [*accept, *decline, *stop],
        garbage=True,
        word_penalty=REPLY_WORD_PENALTY,
        silence_prob=REPLY_SILENCE_PROB,
    )


def build_grammar(
    name: str,
    rules: list[str],
    phrases: Iterable[str],
    *,
    garbage: bool,
    word_penalty: float | None = None,
    silence_prob: float | None = None,
) -> Grammar:
    """A grammar from JSGF `rules` (public rule first) and the phrases they are made of; with
    `garbage`, the rule `<other>` is the out-of-grammar loop."""
    if garbage:
        rules = [*rules, "<other> = <garbage>+;", f"<garbage> = {' | '.join(word for word, _ in GARBAGE)};"]
    text = "#JSGF V1.0;\n\ngrammar " + name + ";\n\n" + "\n".join(rules) + "\n"
    normal = sorted({" ".join(words_of(p)) for p in phrases} - {""})
    words = frozenset(w for p in normal for w in p.split())
    bad = sorted(w for w in words if not _TOKEN.match(w))
    if bad:
        raise VoiceError(f"grammar words that are not words: {bad}", ErrorCode.BAD_GRAMMAR)
    if garbage:
        garbage_words = frozenset(w for w, _ in GARBAGE)
        return Grammar(name, text, tuple(normal), words, GARBAGE, garbage_words, word_penalty, silence_prob)
    return Grammar(name, text, tuple(normal), words, word_penalty=word_penalty, silence_prob=silence_prob)


VOCABULARIES = "device_sdk.vocabularies"
"""Entry-point group of named vocabularies: a zero-argument callable that returns a `Vocabulary`
(the simulators package registers `demo`, its reference agent's catalog)."""


def vocabulary_named(name: str) -> Vocabulary:
    """The vocabulary an installed package registered as `name`, or a `ConfigError` naming those there are."""
    found = {ep.name: ep for ep in entry_points(group=VOCABULARIES)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise ConfigError(f"no vocabulary named {name!r} (installed: {known})")
    vocabulary = found[name].load()()
    if not isinstance(vocabulary, Vocabulary):
        raise ConfigError(f"vocabulary {name!r} is a {type(vocabulary).__name__}, not a Vocabulary")
    return vocabulary
