"""What a spoken or typed reply to a read-back means: a closed set of phrases, nothing guessed.

A wrongly heard "yes" is the worst failure a shopping device can have, so only these exact
phrases of the locale's data file (after case and punctuation are folded) confirm or decline; anything else is unclear,
is asked once more, and then ends as `not_confirmed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.protocol.fields import Decision

_EN = locale_for(DEFAULT_LOCALE)
ACCEPT_PHRASES = _EN.replies.accept
DECLINE_PHRASES = _EN.replies.decline
REPROMPT = _EN.readback.reprompt
"""How every read-back and re-prompt ends: the question the user answers."""
STOP_PHRASES = _EN.suggestion.stop
"""The replies to a suggestion that turn suggestions off on the device ("stop suggestions"): never a
confirmation; the reply grammar for a suggestion's answer carries them (`grammar.reply_grammar(stop=)`)."""


def normalise(text: str) -> str:
    """Lower case, curly quotes straightened, punctuation dropped, spaces collapsed (en-US)."""
    return _EN.normalise_reply(text)


def interpret_reply(text: str, locale: str = DEFAULT_LOCALE) -> Decision | None:
    """`CONFIRM`, `DECLINE`, or None when the reply is neither of `locale`'s exact phrases."""
    data = locale_for(locale)
    phrase = data.normalise_reply(text)
    if phrase in data.replies.accept:
        return Decision.CONFIRM
    if phrase in data.replies.decline:
        return Decision.DECLINE
    return None


def asks_to_stop(text: str, locale: str = DEFAULT_LOCALE) -> bool:
    """Whether `text` is exactly one of `locale`'s phrases that turn suggestions off ("stop
    suggestions", "别再推荐了"), after case and punctuation are folded."""
    data = locale_for(locale)
    return data.normalise_reply(text) in {data.normalise_reply(phrase) for phrase in data.suggestion.stop}


@dataclass
class ReplyDialog:
    """Feeds replies until a decision: `reprompts` re-prompts after unclear replies, then `NO_ANSWER`."""

    reprompts: int = 1
    locale: str = DEFAULT_LOCALE
    heard: list[str] = field(default_factory=list)
    attempts: int = 0
    decision: Decision | None = None

    def feed(self, reply: str | None) -> Decision | None:
        """Take one reply (None for silence); return the decision, or None to re-prompt."""
        return self.decide(interpret_reply(reply, self.locale) if reply is not None else None, reply)

    def decide(self, decision: Decision | None, reply: str | None) -> Decision | None:
        """Take one reply already judged (`ReplyJudge`): its decision, or None when it was unclear."""
        if self.decision is not None:
            return self.decision
        self.attempts += 1
        if reply is not None:
            self.heard.append(reply)
            self.decision = decision
        if self.decision is None and self.attempts > self.reprompts:
            self.decision = Decision.NO_ANSWER
        return self.decision
