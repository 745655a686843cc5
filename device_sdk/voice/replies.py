"""What a spoken or typed reply to a read-back means: a closed set of phrases, nothing guessed.

A wrongly heard "yes" is the worst failure a shopping device can have, so only these exact
phrases (after case and punctuation are folded) confirm or decline; anything else is unclear,
is asked once more, and then ends as `not_confirmed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from device_sdk.consent.readback import ANSWER_PROMPT
from device_sdk.protocol.fields import Decision

ACCEPT_PHRASES = frozenset(
    {"confirm", "yes confirm", "yes", "confirm the order", "yes please buy it", "place the order"}
)
DECLINE_PHRASES = frozenset({"cancel", "no", "no thanks", "stop", "cancel the order", "don't buy it"})
"""How every read-back and re-prompt ends: the question the user answers."""
REPROMPT = f"Sorry, I did not get that. {ANSWER_PROMPT}"

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")


def normalise(text: str) -> str:
    """Lower case, curly quotes straightened, punctuation dropped, spaces collapsed."""
    text = text.lower().replace("\u2019", "'")
    return " ".join(_NOT_WORD.sub(" ", text).split())


def interpret_reply(text: str) -> Decision | None:
    """`CONFIRM`, `DECLINE`, or None when the reply is neither."""
    phrase = normalise(text)
    if phrase in ACCEPT_PHRASES:
        return Decision.CONFIRM
    if phrase in DECLINE_PHRASES:
        return Decision.DECLINE
    return None


@dataclass
class ReplyDialog:
    """Feeds replies until a decision: `reprompts` re-prompts after unclear replies, then `NO_ANSWER`."""

    reprompts: int = 1
    heard: list[str] = field(default_factory=list)
    attempts: int = 0
    decision: Decision | None = None

    def feed(self, reply: str | None) -> Decision | None:
        """Take one reply (None for silence); return the decision, or None to re-prompt."""
        return self.decide(interpret_reply(reply) if reply is not None else None, reply)

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
