"""Sponsored items (issue 22): a paid placement is disclosed before the item on the read-back, the
lens card and the phone sheet, in each locale; the disclosure is inside what the display digest
covers, so a mandate signed over a rendering without it places no order; an agent cannot drop the
label; the audit log and the sponsor report count what was disclosed and ordered."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from device_sdk.consent.lens import LensCard
from device_sdk.consent.readback import compose_phone_sheet, compose_readback, presentation_digest
from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.audit import trail
from device_sdk.platform.checkout.disclosure import sponsor_report, unlabelled
from device_sdk.platform.checkout.policy import PolicyBook
from device_sdk.protocol.errors import ConsentError, ErrorCode, RemoteError
from device_sdk.protocol.fields import Modality, Outcome, new_id
from device_sdk.protocol.messages import AgentRequest, CheckoutProposal, IssuedProposal
from device_sdk.protocol.sponsored import Sponsored
from simulators.agent_core import CatalogAgent
from simulators.catalog import demo_catalog
from simulators.scenario import ShopBackend
from tests.conftest import EmbeddedRestartable
from tests.consent_kit import Shop, make_proposal, open_shop

LABELS = {"en-US": ("Sponsored: ", "[Sponsored]"), "zh-CN": ("广告：", "[广告]")}
SAY = {"en-US": "buy a phone charger and a bottle of milk", "zh-CN": "买一个手机充电器和一瓶牛奶"}


def proposed(locale: str) -> CheckoutProposal:
    """What the reference agent proposes for a charger (a paid placement) and milk (not one)."""
    request = AgentRequest(request_id=new_id("ar"), device_id="speaker-1", session_id=new_id("ses"),
                           text=SAY[locale], locale=locale)  # fmt: skip
    return asyncio.run(CatalogAgent().propose(request))


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_the_agent_marks_its_paid_placements(locale: str) -> None:
    proposal = proposed(locale)
    marks = {line.sku: line.sponsored for line in proposal.lines}
    assert marks == {"charger-usbc-30w": Sponsored(by="m-electronics"), "milk-1l": None}


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_the_read_back_says_sponsored_before_the_item(locale: str) -> None:
    proposal = proposed(locale)
    said, label = compose_readback(proposal), LABELS[locale][0]
    charger, milk = (line.name for line in proposal.lines)
    assert said.count(label) == 1
    assert said.index(label) < said.index(charger) < said.index(milk)
    opened = said[said.index(label) + len(label) :].split({"en-US": ". ", "zh-CN": "。"}[locale])[0]
    assert charger in opened and milk not in opened  # the label opens the sponsored item's sentence
    assert label not in compose_readback(unlabelled(proposal))


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_the_lens_card_shows_the_label_above_the_item(locale: str) -> None:
    proposal = proposed(locale)
    card, bare = LensCard.for_proposal(proposal), LensCard.for_proposal(unlabelled(proposal))
    rows, label = card.text.splitlines(), LABELS[locale][1]
    charger = next(i for i, row in enumerate(rows) if proposal.lines[0].name in row)
    assert rows[charger - 1] == label and rows.count(label) == 1
    drawn = Image.open(io.BytesIO(card.png()))  # drawn in full: the font has every glyph of the label
    assert drawn.size == card.render().size
    assert ImageChops.difference(drawn.convert("RGB"), bare.render().convert("RGB")).getbbox() is not None
    assert card.digest != bare.digest


@pytest.mark.parametrize("locale", ["en-US", "zh-CN"])
def test_the_phone_sheet_shows_the_label_above_the_item(locale: str) -> None:
    proposal = proposed(locale)
    rows, label = compose_phone_sheet(proposal).splitlines(), LABELS[locale][1]
    charger = next(i for i, row in enumerate(rows) if proposal.lines[0].name in row)
    milk = next(i for i, row in enumerate(rows) if proposal.lines[1].name in row)
    assert rows[charger - 1] == label and rows[milk - 1] != label and rows.count(label) == 1


PAID = Sponsored(by="m-electronics")


def sponsored_issue(label: Sponsored | None = PAID) -> IssuedProposal:
    base = make_proposal(items=(("charger-usbc-30w", 1), ("bat-aa-4", 1))).proposal
    lines = [base.lines[0].model_copy(update={"sponsored": label}), base.lines[1]]
    proposal = CheckoutProposal.model_validate(base.model_copy(update={"lines": lines}).model_dump())
    return IssuedProposal(proposal, proposal.encode())


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    placements = {p.sku: p.by for p in demo_catalog().placements}
    yield from open_shop(tmp_path / "shop.db", PolicyBook({"placements": placements}))


def test_a_mandate_over_a_rendering_without_the_label_places_no_order(shop: Shop) -> None:
    offer = shop.offer(sponsored_issue())
    assert "Sponsored: 1 piece of USB-C phone charger" in offer.readback
    bare = presentation_digest(unlabelled(offer.proposal), Modality.VOICE)
    assert bare != offer.display_digest
    shown_bare = offer.model_copy(update={"display_digest": bare})
    with pytest.raises(ConsentError) as caught:
        shop.complete(shop.confirm(shown_bare, display_digest=bare))
    assert caught.value.code is ErrorCode.SPONSORED_NOT_DISCLOSED and "m-electronics" in caught.value.text
    assert shop.verifier.orders() == [] and shop.charges == []
    assert shop.refusals(offer.session_id) == ["sponsored_not_disclosed"]
    order = shop.complete(shop.confirm(offer))  # the rendering with the label: the same offer orders
    assert order.order_id and len(shop.verifier.orders()) == 1
    kinds = {r["kind"]: r for r in trail(shop.db.url, offer.session_id)}
    assert kinds["disclosure"]["sponsor"] == "m-electronics" and kinds["disclosure"]["sku"] == "charger-usbc-30w"
    assert kinds["order"]["sponsors"] == ["m-electronics"]


def test_any_other_wrong_digest_stays_a_display_mismatch(shop: Shop) -> None:
    offer = shop.offer(sponsored_issue())
    wrong = offer.model_copy(update={"display_digest": "0" * 64})
    with pytest.raises(ConsentError) as caught:
        shop.complete(shop.confirm(wrong, display_digest="0" * 64))
    assert caught.value.code is ErrorCode.DISPLAY_MISMATCH


@pytest.mark.parametrize("label", [None, Sponsored(by="m-fresh")])
def test_an_agent_cannot_drop_or_change_the_label(shop: Shop, label: Sponsored | None) -> None:
    issued = sponsored_issue(label)
    with pytest.raises(ConsentError) as caught:
        shop.offer(issued)
    assert caught.value.code is ErrorCode.SPONSORED_NOT_DISCLOSED and "charger-usbc-30w" in caught.value.text
    assert shop.refusals(issued.proposal.session_id) == ["sponsored_not_disclosed"]
    assert [r["kind"] for r in trail(shop.db.url, issued.proposal.session_id)] == ["refusal"]  # no terms, no offer


class LabelDroppingAgent(CatalogAgent):
    """The reference agent, but it leaves the sponsored label off its paid placements."""

    async def propose(self, request: AgentRequest) -> CheckoutProposal:
        proposal = await super().propose(request)
        return unlabelled(proposal)


async def test_an_agent_dropping_the_label_gets_no_offer_to_the_device(embedded: EmbeddedRestartable) -> None:
    async with (
        ShopBackend(embedded.url, agent=LabelDroppingAgent()) as shop,
        DeviceClient(embedded.url, "speaker-1", key=shop.provision("speaker-1")) as speaker,
    ):
        with pytest.raises(RemoteError) as caught:
            await speaker.ask("buy a phone charger")
        assert caught.value.code is ErrorCode.SPONSORED_NOT_DISCLOSED
        assert (await speaker.ask("buy a bottle of milk")).request.proposal.lines[0].sku == "milk-1l"  # not sponsored
        assert shop.checkout.orders == []


def test_the_sponsor_report_counts_impressions_and_orders(shop: Shop, tmp_path: Path) -> None:
    ordered, shown = shop.offer(sponsored_issue()), shop.offer(sponsored_issue())
    shop.offer()  # no sponsored line: counted for no one
    shop.complete(shop.confirm(ordered))
    shop.verifier.cancel(shown.checkout_id, Outcome.DECLINED, "the user declined on the device")
    rows = sponsor_report(shop.db.url)
    assert [(r.sponsor, r.impressions, r.orders) for r in rows] == [("m-electronics", 2, 1)]
    done = subprocess.run([sys.executable, "-m", "device_sdk.cli", "report", "partners", "--sponsors", "--json",
                           "--db", str(tmp_path / "shop.db")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"sponsors": [{"sponsor": "m-electronics", "impressions": 2, "orders": 1}]}


def test_the_demo_shows_the_sponsored_line_and_its_label(tmp_path: Path) -> None:
    command = ["demo", "--say", "buy a phone charger", "--json", "--audit", str(tmp_path / "audit.db")]
    done = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", *command], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["proposal"]["lines"][0]["sponsored"] == {"by": "m-electronics"}
    assert out["readback"].startswith("Please confirm your order. Sponsored: 1 piece of USB-C phone charger")
    assert out["outcome"] == "ordered" and out["verification"]["accepted"] is True
