"""The reference agent's command parser, against the public voice evaluation commands and more."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_sdk.protocol.errors import AgentError, ErrorCode
from device_sdk.protocol.messages import AgentRequest
from simulators.agent_core import MARKETPLACE, CatalogAgent
from simulators.catalog import demo_catalog
from simulators.command_parser import CommandParser, stem

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "voice-public.jsonl").read_text().splitlines()]
PARSER = CommandParser(demo_catalog())


def lines(text: str) -> list[tuple[str, int]]:
    return sorted((line.product.sku, line.qty) for line in PARSER.parse(text))


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_public_eval_commands(case: dict[str, object]) -> None:
    expected = sorted((item["sku"], item["qty"]) for item in case["expect"])  # type: ignore[attr-defined]
    assert lines(str(case["command"])) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("buy two packs of AA batteries", [("bat-aa-4", 2)]),
        ("Buy 3 AAA batteries!", [("bat-aaa-4", 3)]),
        ("order twenty one packs of socks", [("socks-5", 21)]),
        ("get me a couple of bananas", [("bananas-1kg", 2)]),
        ("buy milk plus two bags of rice and also an umbrella",
         [("milk-1l", 1), ("rice-5kg", 2), ("umbrella-compact", 1)]),
        ("buy eggs, milk, two green tea", [("eggs-12", 1), ("milk-1l", 1), ("tea-green-100", 2)]),
        ("buy a milk and two milks", [("milk-1l", 3)]),
        ("I'd like to order a USB-C cable please", [("cable-usbc-1m", 1)]),
        ("buy a a batteries", [("bat-aa-4", 1)]),
    ],
)  # fmt: skip
def test_quantities_units_aliases_connectors(text: str, expected: list[tuple[str, int]]) -> None:
    assert lines(text) == sorted(expected)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", ErrorCode.NOT_UNDERSTOOD),
        ("buy a spaceship", ErrorCode.ITEM_NOT_FOUND),
        ("buy two milk and a spaceship", ErrorCode.ITEM_NOT_FOUND),
        ("buy 100 socks", ErrorCode.QUANTITY_OUT_OF_RANGE),
        ("buy 0 socks", ErrorCode.QUANTITY_OUT_OF_RANGE),
        ("buy ninety socks and twenty socks", ErrorCode.QUANTITY_OUT_OF_RANGE),
        ("buy three bottles of water", ErrorCode.NOT_UNDERSTOOD),
        ("buy two boxes of milk", ErrorCode.NOT_UNDERSTOOD),
    ],
)
def test_what_is_not_understood_is_refused_not_guessed(text: str, code: ErrorCode) -> None:
    with pytest.raises(AgentError) as caught:
        PARSER.parse(text)
    assert caught.value.code == code


def test_stem_is_plural_insensitive() -> None:
    assert [stem(w) for w in ["batteries", "boxes", "glasses", "eggs", "bunches", "bus"]] == [
        "battery", "box", "glass", "egg", "bunch", "bus",
    ]  # fmt: skip


async def test_agent_prices_from_the_catalog_and_picks_the_payee() -> None:
    agent = CatalogAgent()
    request = AgentRequest(request_id="r1", device_id="d1", session_id="s1", text="buy two milk and one cat food")
    proposal = await agent.propose(request)
    assert proposal.merchant == MARKETPLACE  # two sellers: the marketplace is merchant of record
    assert [(line.sku, line.qty, line.line_total_minor) for line in proposal.lines] == [
        ("milk-1l", 2, 2500), ("food-cat-2kg", 1, 8900),
    ]  # fmt: skip
    assert proposal.total_minor == 11400 and proposal.currency == "CNY"
    single = await agent.propose(request.model_copy(update={"text": "buy milk"}))
    assert single.merchant.id == "m-fresh"
