"""The confirmation card on a pair of glasses: its text (`readback.compose_lens_card`, whose digest a
`lens_tap` mandate signs) drawn at the display's resolution, as the glasses draw it and as makers
see it in a PNG (`device-sdk simulate glasses --png`).

A see-through display shows black as clear, so the card is light text on black. Every row of the
text is drawn, whole: the font shrinks until the card fits, and a card that does not fit even at
the smallest size is refused (`display_mismatch`) rather than shown cut, because the wearer must
see all of what the tap confirms.

The card is drawn in the first font of a search list that has a glyph for every character of it:
the fonts in `$DEVICE_SDK_LENS_FONT` (else Noto Sans CJK SC, from Debian's `fonts-noto-cjk`), then
Pillow's default, which has no CJK. A card no font can draw whole (a Chinese card with no CJK font
installed) is refused (`display_mismatch`) too, rather than shown as boxes.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from device_sdk.protocol.errors import ErrorCode, ProtocolError
from device_sdk.protocol.messages import CheckoutProposal
from device_sdk.terminal import printable, unsafe_characters

from .readback import compose_lens_card, display_digest

LENS_SIZE = (640, 400)
_MARGIN = 16
_SIZES = (26, 24, 22, 20, 18, 16, 14, 12)
_TEXT, _DIM, _ACCENT = (235, 235, 235), (150, 150, 150), (90, 220, 120)

FONT_ENV = "DEVICE_SDK_LENS_FONT"
"""The fonts the lens tries before Pillow's default, in order: font files separated by `os.pathsep`,
each with an optional `#N` that picks face N of a collection (`/path/NotoSansCJK-Regular.ttc#2`). A
path is used as it is; a bare file name is looked up in the system's font folders (as Pillow does)."""


@dataclass(frozen=True)
class LensFont:
    """A font file the lens may draw with; `index` picks a face of a collection (`.ttc`)."""

    path: str
    index: int = 0

    @classmethod
    def parse(cls, spec: str) -> LensFont:
        """`"/fonts/a.ttf"` or, for face 2 of a collection, `"/fonts/a.ttc#2"`."""
        path, hash_, index = spec.rpartition("#")
        return cls(path, int(index)) if hash_ and index.isdigit() else cls(spec)


NOTO_SANS_CJK_SC = LensFont("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2)
"""Simplified Chinese: face 2 of the collection (0 JP, 1 KR, 2 SC, 3 TC, 4 HK) that Debian's
`fonts-noto-cjk` installs. It has Latin too, so with it installed every card is drawn in it."""


def lens_fonts() -> tuple[LensFont, ...]:
    """The fonts to try before Pillow's default: those in `$DEVICE_SDK_LENS_FONT`, else Noto Sans CJK SC."""
    configured = os.environ.get(FONT_ENV, "")
    return tuple(LensFont.parse(spec) for spec in configured.split(os.pathsep) if spec) or (NOTO_SANS_CJK_SC,)


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

    def render(self, size: tuple[int, int] = LENS_SIZE, fonts: Sequence[LensFont] | None = None) -> Image.Image:
        return render_card(self.text, size, fonts)

    def png(self, size: tuple[int, int] = LENS_SIZE, fonts: Sequence[LensFont] | None = None) -> bytes:
        out = io.BytesIO()
        self.render(size, fonts).save(out, "PNG")
        return out.getvalue()


def render_card(text: str, size: tuple[int, int] = LENS_SIZE, fonts: Sequence[LensFont] | None = None) -> Image.Image:
    """Every row of `text` on a black lens: the title and the prompt highlighted, sellers dimmed,
    item totals right-aligned after the `|`. `fonts` (default: `lens_fonts()`) are tried in order,
    then Pillow's default. A card with a control character or a bidi override in it (other than the
    line feeds between rows) is refused: the wearer would not see what the tap signs."""
    hidden = unsafe_characters(text, newlines=True)
    if hidden:
        raise ProtocolError(
            f"the card holds control or bidi characters ({printable(''.join(hidden))}): it cannot be shown as it"
            " is signed; confirm on another device",
            ErrorCode.DISPLAY_MISMATCH,
        )
    rows = text.split("\n")
    width, height = size
    face = choose_font(text, lens_fonts() if fonts is None else fonts)
    for font_size in _SIZES:
        font = _load(face, font_size)
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
        left, right = columns(row)
        draw.text((_MARGIN, y), left, fill=colour, font=font)
        if right:
            draw.text((width - _MARGIN, y), right, fill=colour, font=font, anchor="ra")
        y += step
    return image


def choose_font(text: str, fonts: Sequence[LensFont]) -> LensFont | None:
    """The first of `fonts` that can be read and has a glyph for every character of `text`, else
    Pillow's default (None) if it has; a card none can draw whole is refused, so never signed."""
    misses: list[str] = []
    for face in (*fonts, None):
        try:
            missing = missing_glyphs(text, _load(face, _SIZES[-1]))
        except OSError:  # not installed, or not a font: the next one
            continue
        if not missing:
            return face
        misses.append("".join(missing))
    raise ProtocolError(
        f"the lens font has no glyph for {min(misses, key=len)!r}: the card cannot be shown as it is"
        " signed; confirm on another device",
        ErrorCode.DISPLAY_MISMATCH,
    )


def missing_glyphs(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> list[str]:
    """The characters of `text` that `font` would draw as its "no glyph" box (the box it draws for
    U+FFFF, a noncharacter no font maps), each once."""

    def drawn(char: str) -> tuple[tuple[int, int], bytes]:
        mask = font.getmask(char)
        return mask.size, bytes(mask)

    box = drawn("\uffff")
    return sorted(c for c in set(text) if not c.isspace() and drawn(c) == box)


@functools.cache
def _load(face: LensFont | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """`face` at `size` (None: Pillow's default), loaded once: a card is drawn per offer."""
    if face is None:
        return ImageFont.load_default(size)
    if os.path.dirname(face.path) and not os.path.isfile(face.path):
        raise FileNotFoundError(face.path)  # else Pillow would load a file of that name from elsewhere
    return ImageFont.truetype(face.path, size, index=face.index)


def columns(row: str) -> tuple[str, str]:
    """A row's text and its right-aligned amount, split at its last ` | `: the amount is the SDK's,
    after every name (names can hold no `|`, `names.shown_name`), so a name never reaches that column."""
    left, _, right = row.rpartition(" | ")
    return (left, right) if left else (row, "")


def _row_width(row: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> float:
    left, right = columns(row)
    return font.getlength(left) + (font.getlength("   " + right) if right else 0)
