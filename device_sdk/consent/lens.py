"""The confirmation card on a pair of glasses: its text (`readback.compose_lens_card`, whose digest a
`lens_tap` mandate signs) drawn at the display's resolution, as the glasses draw it and as makers
see it in a PNG (`device-sdk simulate glasses --png`).

A see-through display shows black as clear, so the card is light text on black. Every row of the
text is drawn, whole: the font shrinks until the card fits, and a card that does not fit even at
the smallest size is refused (`display_mismatch`) rather than shown cut, because the wearer must
see all of what the tap confirms; so is a card holding a character the font has no glyph for (a
Chinese card on Pillow's default font), rather than shown as boxes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from device_sdk.protocol.errors import ErrorCode, ProtocolError
from device_sdk.protocol.messages import CheckoutProposal

from .readback import compose_lens_card, display_digest

LENS_SIZE = (640, 400)
_MARGIN = 16
_SIZES = (26, 24, 22, 20, 18, 16, 14, 12)
_TEXT, _DIM, _ACCENT = (235, 235, 235), (150, 150, 150), (90, 220, 120)


@dataclass(frozen=True)
class LensCard:
    """One card: the exact text shown and its digest."""

    text: str

    @classmethod
    def for_proposal(cls, proposal: CheckoutProposal) -> LensCard:
        return cls(compose_lens_card(proposal))

    @property
    def digest(self) -> str:
        return display_digest(self.text)

    @property
    def payload(self) -> bytes:
        """What travels to the glasses in a display message (docs/ble.md)."""
        return self.text.encode()

    def render(self, size: tuple[int, int] = LENS_SIZE) -> Image.Image:
        return render_card(self.text, size)

    def png(self, size: tuple[int, int] = LENS_SIZE) -> bytes:
        out = io.BytesIO()
        self.render(size).save(out, "PNG")
        return out.getvalue()


def render_card(text: str, size: tuple[int, int] = LENS_SIZE) -> Image.Image:
    """Every row of `text` on a black lens: the title and the prompt highlighted, sellers dimmed,
    item totals right-aligned after the `|`."""
    rows = text.split("\n")
    width, height = size
    missing = missing_glyphs(text, ImageFont.load_default(_SIZES[-1]))
    if missing:
        raise ProtocolError(
            f"the lens font has no glyph for {''.join(missing)!r}: the card cannot be shown as it is signed;"
            " confirm on another device",
            ErrorCode.DISPLAY_MISMATCH,
        )
    for font_size in _SIZES:
        font = ImageFont.load_default(font_size)
        step = font_size + font_size // 3
        if step * len(rows) + 2 * _MARGIN > height:
            continue
        if all(_row_width(row, font) <= width - 2 * _MARGIN for row in rows):
            break
    else:
        raise ProtocolError(
            f"a card of {len(rows)} rows does not fit a {width}x{height} lens: confirm on another device",
            ErrorCode.DISPLAY_MISMATCH,
        )
    image = Image.new("RGB", size, "black")
    draw = ImageDraw.Draw(image)
    y = _MARGIN
    for index, row in enumerate(rows):
        colour = _ACCENT if index in (0, len(rows) - 1) else _DIM if row.startswith("  ") else _TEXT
        left, _, right = row.partition(" | ")
        draw.text((_MARGIN, y), left, fill=colour, font=font)
        if right:
            draw.text((width - _MARGIN, y), right, fill=colour, font=font, anchor="ra")
        y += step
    return image


def missing_glyphs(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
    """The characters of `text` that `font` would draw as its "no glyph" box (the box it draws for
    a private-use character), each once: a card holding any is never shown, so never signed."""

    def drawn(char: str) -> tuple[tuple[int, int], bytes]:
        mask = font.getmask(char)
        return mask.size, bytes(mask)

    box = drawn("\ue000")
    return sorted({c for c in text if not c.isspace() and drawn(c) == box})


def _row_width(row: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> float:
    left, _, right = row.partition(" | ")
    return font.getlength(left) + (font.getlength("   " + right) if right else 0)
