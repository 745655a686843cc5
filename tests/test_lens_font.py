"""The lens font: a Chinese card is drawn in Noto Sans CJK SC with real glyphs, and a card holding a
character no font on the search list can draw (or a Chinese card with no CJK font) is refused
before it is shown, never drawn as boxes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import ImageFont

from device_sdk.consent.lens import (
    FONT_ENV,
    LENS_SIZE,
    NOTO_SANS_CJK_SC,
    LensCard,
    LensFont,
    choose_font,
    lens_fonts,
    missing_glyphs,
)
from device_sdk.protocol.errors import ErrorCode, ProtocolError
from device_sdk.protocol.messages import AgentRequest
from simulators.agent_core import CatalogAgent

ENGLISH = LensCard("Confirm order\n1 x Thing | 1.00 CNY\nTap to confirm, swipe to cancel")


@pytest.fixture(autouse=True)
def default_search_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FONT_ENV, raising=False)


@pytest.fixture
def noto() -> Path:
    path = Path(NOTO_SANS_CJK_SC.path)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing in CI: install the Debian package fonts-noto-cjk")
        pytest.skip(f"Noto Sans CJK is not installed ({path}): apt-get install fonts-noto-cjk")
    return path


async def chinese_card() -> LensCard:
    """The card for 2 包 五号电池 and 1 瓶 牛奶, proposed by the reference agent in zh-CN."""
    request = AgentRequest(request_id="r1", device_id="d1", session_id="s1", text="帮我买两包五号电池和一瓶牛奶",
                           locale="zh-CN")  # fmt: skip
    return LensCard.for_proposal(await CatalogAgent().propose(request))


def test_the_collection_face_is_simplified_chinese(noto: Path) -> None:
    font = ImageFont.truetype(noto, 20, index=NOTO_SANS_CJK_SC.index)
    assert font.getname() == ("Noto Sans CJK SC", "Regular")


async def test_a_chinese_card_is_drawn_with_real_glyphs(noto: Path) -> None:
    card = await chinese_card()
    assert card.text.splitlines()[0] == "确认订单" and "合计 38.30 元" in card.text
    assert choose_font(card.text, lens_fonts()) == NOTO_SANS_CJK_SC
    font = ImageFont.truetype(noto, 12, index=NOTO_SANS_CJK_SC.index)
    assert missing_glyphs(card.text, font) == []
    image = card.render()
    assert image.size == LENS_SIZE and image.getbbox() is not None
    assert card.png() == card.png()  # deterministic
    # Boxes would draw 确 and 认 alike; real glyphs differ, in the font and on the lens.
    default = ImageFont.load_default(12)
    assert bytes(default.getmask("确")) == bytes(default.getmask("认"))
    assert bytes(font.getmask("确")) != bytes(font.getmask("认"))
    assert LensCard("确").render().tobytes() != LensCard("认").render().tobytes()


@pytest.mark.parametrize("char", ["\ue000", "\u0e01", "\U0001f600"])  # private use, Thai ก, an emoji
def test_a_character_no_font_has_refuses_the_card(char: str) -> None:
    for text in (f"确认订单\n1 x 电池{char} | 1.00 元\n轻点确认", f"Confirm order\n1 x Thing{char} | 1.00 CNY"):
        with pytest.raises(ProtocolError) as refused:
            LensCard(text).render()
        assert refused.value.code == ErrorCode.DISPLAY_MISMATCH and repr(char)[1:-1] in refused.value.text


def test_the_refusal_names_only_what_the_cjk_font_lacks(noto: Path) -> None:
    with pytest.raises(ProtocolError) as refused:
        LensCard("确认订单\n1 x 电池\ue000 | 1.00 元").render()
    assert "for '\\ue000':" in refused.value.text


@pytest.mark.parametrize("forced", ["missing file", "default only"])
async def test_without_a_cjk_font_a_chinese_card_is_refused(monkeypatch: pytest.MonkeyPatch, forced: str) -> None:
    card = await chinese_card()
    fonts: tuple[LensFont, ...] | None = None
    if forced == "missing file":
        monkeypatch.setenv(FONT_ENV, "/nonexistent/NotoSansCJK-Regular.ttc#2")
    else:
        fonts = ()
    with pytest.raises(ProtocolError) as refused:
        card.render(fonts=fonts)
    assert refused.value.code == ErrorCode.DISPLAY_MISMATCH and "五" in refused.value.text
    assert choose_font(ENGLISH.text, lens_fonts() if fonts is None else fonts) is None  # Pillow's default
    assert ENGLISH.render(fonts=fonts).getbbox() is not None


def test_the_search_list_is_configured_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lens_fonts() == (NOTO_SANS_CJK_SC,)
    assert LensFont.parse("/f/a.ttc#2") == LensFont("/f/a.ttc", 2)
    assert LensFont.parse("/f/a#b.ttf") == LensFont("/f/a#b.ttf")
    monkeypatch.setenv(FONT_ENV, f"/f/a.ttf{os.pathsep}/f/b.ttc#3{os.pathsep}")
    assert lens_fonts() == (LensFont("/f/a.ttf"), LensFont("/f/b.ttc", 3))


def test_a_configured_font_is_tried_first(monkeypatch: pytest.MonkeyPatch, noto: Path) -> None:
    japanese = LensFont(str(noto), 0)  # the JP face: 确 and 认 as Japan draws them
    monkeypatch.setenv(FONT_ENV, f"/nonexistent.ttf{os.pathsep}{noto}#0")
    assert choose_font("确认订单", lens_fonts()) == japanese
    assert LensCard("确认订单").render().getbbox() is not None
    monkeypatch.setenv(FONT_ENV, f"{noto.name}#2")  # a bare name: looked up in the system's font folders
    assert choose_font("确认订单", lens_fonts()) == LensFont(noto.name, 2)
