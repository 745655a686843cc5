"""The SDK's read-back and the closed confirm/decline reply set."""

from __future__ import annotations

import hashlib

import pytest

from device_sdk.consent.readback import compose_readback, display_digest, format_amount
from device_sdk.protocol.fields import Decision
from device_sdk.voice.replies import ACCEPT_PHRASES, DECLINE_PHRASES, ReplyDialog, interpret_reply
from tests.test_messages import proposal


def test_readback_says_items_quantities_sellers_total_and_payee() -> None:
    text = compose_readback(proposal())
    assert "2 bottles of Whole milk, 1 litre, from FreshMart, 25.00 CNY." in text
    assert "Total 25.00 CNY, paid to FreshMart." in text
    assert text.startswith("Please confirm your order.")


def test_digest_is_sha256_of_the_exact_text() -> None:
    text = compose_readback(proposal())
    assert display_digest(text) == hashlib.sha256(text.encode()).hexdigest()
    assert compose_readback(proposal()) == text  # deterministic: every party derives the same digest
    assert compose_readback(proposal(checkout_id="co_other")) == text  # ids are not read out
    changed = proposal().model_dump()
    changed["lines"][0].update(qty=3, line_total_minor=3750)
    changed["total_minor"] = 3750
    assert display_digest(compose_readback(proposal(**changed))) != display_digest(text)


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (2580, "CNY", "25.80 CNY"),
        (5, "CNY", "0.05 CNY"),
        (1500, "JPY", "1500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (12000, "CLP", "12000 CLP"),
        (1250, "OMR", "1.250 OMR"),
        (990, "ISK", "990 ISK"),
        (12345, "CLF", "1.2345 CLF"),
    ],
)
def test_amounts(minor: int, currency: str, text: str) -> None:
    assert format_amount(minor, currency) == text


@pytest.mark.parametrize("phrase", sorted(ACCEPT_PHRASES))
def test_accept_phrases(phrase: str) -> None:
    assert interpret_reply(phrase.upper() + "!") is Decision.CONFIRM


@pytest.mark.parametrize("phrase", sorted(DECLINE_PHRASES | {"Don\u2019t buy it."}))
def test_decline_phrases(phrase: str) -> None:
    assert interpret_reply(phrase) is Decision.DECLINE


@pytest.mark.parametrize(
    "reply", ["hmm", "yeah", "sure", "yes no", "confirm it maybe", "what is the delivery time", ""]
)
def test_anything_else_is_unclear(reply: str) -> None:
    assert interpret_reply(reply) is None


def test_dialog_reprompts_once_then_gives_up() -> None:
    dialog = ReplyDialog()
    assert dialog.feed("hmm") is None
    assert dialog.feed("wait") is Decision.NO_ANSWER
    assert dialog.heard == ["hmm", "wait"]
    assert dialog.feed("confirm") is Decision.NO_ANSWER  # too late: decided


def test_dialog_accepts_after_a_reprompt_and_silence_counts() -> None:
    dialog = ReplyDialog()
    assert dialog.feed("hmm") is None
    assert dialog.feed("yes confirm") is Decision.CONFIRM
    silent = ReplyDialog()
    assert silent.feed(None) is None
    assert silent.feed(None) is Decision.NO_ANSWER
