"""Names shown to a user cannot hide characters, pass for a price or split the lens card's columns;
what is hashed is read whole: a proposal with a field this side does not know is refused and nothing
is stored (issue 18, finding 9)."""

from __future__ import annotations

import hashlib
import json
import unicodedata

import pytest
from pydantic import ValidationError

from device_sdk.consent.lens import LensCard, columns
from device_sdk.consent.readback import compose_lens_card, compose_phone_sheet, compose_readback, format_amount
from device_sdk.protocol.errors import ErrorCode, ProtocolError, RemoteError
from device_sdk.protocol.messages import AgentRequest, CheckoutProposal, IssuedProposal, Merchant, ProposalLine, decode
from device_sdk.protocol.names import shown_name
from simulators.agent_core import CatalogAgent
from simulators.catalog import MARKETPLACE_NAMES, demo_catalog
from simulators.scenario import ShopBackend
from tests.conftest import Restartable, keyed

SELLER = Merchant(id="m-fresh", name="FreshMart")

HIDDEN = {
    "\u3164": "Hangul filler",
    "\u115f": "Hangul choseong filler",
    "\uffa0": "halfwidth Hangul filler",
    "\u2800": "braille blank",
    "\uffff": "noncharacter",
    "\ufdd0": "noncharacter",
    "\u0378": "unassigned",
    "\U000e0080": "unassigned (tags block)",
    "\u034f": "combining grapheme joiner",
    "\ufe0f": "variation selector",
    "\U000e0100": "variation selector supplement",
    "\u180e": "Mongolian vowel separator",
    "\u0007": "bell",
    "\u001b": "escape",
    "\u0085": "next line (C1)",
    "\u200b": "zero-width space",
    "\u200d": "zero-width joiner",
    "\u2060": "word joiner",
    "\ufeff": "byte order mark",
    "\u00ad": "soft hyphen",
    "\u202e": "right-to-left override",
    "\u2066": "left-to-right isolate",
    "\u061c": "Arabic letter mark",
    "\ue000": "private use",
    "\u00a0": "no-break space",
    "\u3000": "ideographic space",
    "\u2028": "line separator",
}


def wire(**changes: str) -> bytes:
    """A proposal's wire bytes with the product name, seller name, payee name or unit replaced."""
    data = {
        "v": 1, "type": "checkout.proposal", "checkout_id": "co_1", "request_id": "req_1", "device_id": "speaker-1",
        "session_id": "ses_1", "merchant": {"id": "m-fresh", "name": changes.get("payee", "FreshMart")},
        "currency": "CNY", "total_minor": 2500, "created_at": 1.0,
        "lines": [{
            "sku": "milk-1l", "name": changes.get("name", "Whole milk"), "qty": 2,
            "unit": changes.get("unit", "bottle"),
            "unit_price_minor": 1250, "line_total_minor": 2500,
            "seller": {"id": "m-fresh", "name": changes.get("seller", "FreshMart")},
        }],
    }  # fmt: skip
    return json.dumps(data, ensure_ascii=False).encode()


def line(name: str, seller: Merchant = SELLER) -> ProposalLine:
    return ProposalLine(sku="milk-1l", name=name, qty=2, unit_price_minor=1250, line_total_minor=2500, seller=seller)


def test_finding_9_invisible_control_and_unassigned_characters_are_refused_in_every_name() -> None:
    assert isinstance(decode(wire()), CheckoutProposal)
    for char, what in HIDDEN.items():
        for where in ("name", "seller", "payee", "unit"):
            for name in (f"Whole{char}milk", f"Whole milk{char}", char):
                with pytest.raises(ProtocolError) as caught:
                    decode(wire(**{where: name}))
                assert caught.value.code is ErrorCode.BAD_MESSAGE, (what, where)
                assert "name" in caught.value.text or "unit" in caught.value.text, (what, where)
        with pytest.raises(ValidationError, match=f"U\\+{ord(char):04X}"):
            line(f"Whole{char}milk")


def test_finding_9_a_name_with_no_visible_character_or_a_stray_mark_is_refused() -> None:
    for name in (" ", "   ", "\u0301milk", "milk \u0301x"):
        with pytest.raises(ProtocolError, match=r"lines\.0\.name"):
            decode(wire(name=name))


def test_finding_9_names_are_composed_nfc_and_the_hash_is_over_the_nfc_form() -> None:
    decomposed = "Cafe\u0301 au lait"
    made = CheckoutProposal(
        checkout_id="co_1", request_id="req_1", device_id="speaker-1", session_id="ses_1",
        merchant=Merchant(id="m-cafe", name="Le Cafe\u0301"), currency="CNY", lines=[line(decomposed)],
        total_minor=2500, created_at=1.0,
    )  # fmt: skip
    assert made.lines[0].name == "Café au lait" == unicodedata.normalize("NFC", decomposed)
    assert made.merchant.name == "Le Café"
    raw = made.encode()
    assert "Café au lait".encode() in raw and "e\u0301".encode() not in raw
    issued = IssuedProposal(made, raw)
    assert issued.checkout_hash == hashlib.sha256(raw).hexdigest()
    assert "Café au lait" in compose_readback(made) and "Le Café" in compose_lens_card(made)
    assert decode(raw) == made  # the composed bytes are what travels and what is hashed
    with pytest.raises(ProtocolError, match="NFC") as caught:  # decomposed bytes on the wire: refused, not rehashed
        decode(wire(name=decomposed))
    assert caught.value.code is ErrorCode.BAD_MESSAGE


FAKES = [
    ("name", "Whole milk | 0.01 CNY"),
    ("name", "Whole milk 0.01 CNY"),
    ("name", "Whole milk ¥0.01"),
    ("name", "Whole milk \uff5c 1.00"),  # a full-width bar
    ("name", "牛奶 0.01元"),
    ("name", "Milk, now 2 yuan"),
    ("name", "$1 milk"),
    ("seller", "FreshMart | 0.01 CNY"),
    ("seller", "FreshMart. Total 1.00 CNY"),
    ("payee", "FreshMart (refund 25.00 CNY)"),
    ("unit", "bottle | 0.01"),
]


def test_finding_9_a_name_cannot_fake_a_price_on_the_card() -> None:
    for where, name in FAKES:
        with pytest.raises(ProtocolError) as caught:
            decode(wire(**{where: name}))
        assert caught.value.code is ErrorCode.BAD_MESSAGE, name
        assert "price" in caught.value.text or "vertical bar" in caught.value.text, name
    # names with numbers that are not amounts stay
    for name in ("AA batteries, pack of 4", "USB 3.0 cable, 2 m", "HDMI 2.1", "5号电池 4节", "Top 10 teas"):
        assert shown_name(name) == name
    # the card's amount column is the SDK's amount, never text from a name
    proposal = decode(wire(name="Whole milk"))
    assert isinstance(proposal, CheckoutProposal)
    card = LensCard.for_proposal(proposal).text.split("\n")
    item = next(row for row in card if "Whole milk" in row)
    assert columns(item) == ("2 x Whole milk", format_amount(2500, "CNY"))
    assert [columns(row)[1] for row in card if columns(row)[1]] == [format_amount(2500, "CNY")]
    assert columns("1 x Milk | 0.01 CNY | 12.90 CNY")[1] == "12.90 CNY"  # even a name that slipped past


def test_catalog_names_in_both_locales_pass_unchanged() -> None:
    catalog = demo_catalog()
    names = [*MARKETPLACE_NAMES.values()]
    for product in catalog.products:
        names += [product.name, product.unit] + [v for loc in product.locales.values() for v in (loc.name, loc.unit)]
    names += [m.name for m in catalog.merchants] + [n for m in catalog.merchants for n in m.names.values()]
    assert any("\u4e00" <= c <= "\u9fff" for name in names for c in name)  # the zh-CN catalog is in it
    for name in names:
        assert shown_name(name) == name


async def test_a_zh_cn_proposal_from_the_catalog_agent_still_passes() -> None:
    agent = CatalogAgent(demo_catalog())
    request = AgentRequest(
        request_id="r1",
        device_id="speaker-1",
        session_id="s1",
        text="买一瓶牛奶、两袋咖啡豆，再加一副耳机",
        locale="zh-CN",
    )
    made = await agent.propose(request)
    assert decode(made.encode()) == made
    assert "来自" in compose_lens_card(made) and compose_phone_sheet(made)


# unknown fields in what is hashed ---------------------------------------------------------------


def test_finding_9_unknown_fields_in_a_proposal_are_refused() -> None:
    for path in ((), ("merchant",), ("lines", 0), ("lines", 0, "seller")):
        data = json.loads(wire())
        target = data
        for part in path:
            target = target[part]
        target["discount_note"] = "free"
        with pytest.raises(ProtocolError, match="discount_note") as caught:
            decode(json.dumps(data).encode())
        assert caught.value.code is ErrorCode.BAD_MESSAGE
    with pytest.raises(ValidationError, match="extra"):
        CheckoutProposal.model_validate({**json.loads(wire()), "discount_note": "free"})


class ProposalWithMore(CheckoutProposal):
    """A newer agent's proposal: one field more than this side knows."""

    discount_note: str = "10% off, paid back later"


class NewerAgent(CatalogAgent):
    async def propose(self, request: AgentRequest) -> CheckoutProposal:
        made = await super().propose(request)
        return ProposalWithMore.model_validate(made.model_dump())


class DecomposingAgent(CatalogAgent):
    """Sends its first line's name decomposed (NFD), bypassing the model's own composition."""

    async def propose(self, request: AgentRequest) -> CheckoutProposal:
        made = await super().propose(request)
        first = made.lines[0].model_copy(update={"name": "Cafe\u0301 milk"})
        return made.model_copy(update={"lines": [first, *made.lines[1:]]})


@pytest.mark.parametrize("agent", [NewerAgent, DecomposingAgent])
async def test_finding_9_a_proposal_with_an_unknown_field_is_refused_and_no_checkout_stored(
    embedded: Restartable, agent: type[CatalogAgent]
) -> None:
    async with ShopBackend(embedded.url, agent=agent(demo_catalog())) as shop, keyed(shop, embedded) as device:
        with pytest.raises(RemoteError) as caught:
            await device.ask("buy a bottle of milk")
        assert caught.value.code is ErrorCode.BAD_PROPOSAL
        assert "discount_note" in caught.value.text or "NFC" in caught.value.text
        stored = shop.db.call(lambda conn: conn.execute("SELECT count(*) FROM checkouts").fetchone()[0])
        assert stored == 0 and shop.checkout.orders == []
