"""The disclosure a paid placement carries on a proposal line.

A line whose choice was paid for names its sponsor: `sponsored: {"by": MERCHANT_ID}`. The line is
hashed, so the label cannot be dropped after the offer is issued; the SDK shows the disclosure
("Sponsored", zh-CN "广告") before the item on every surface, inside what the display digest covers.
"""

from __future__ import annotations

from pydantic import ConfigDict

from .fields import Id, WireModel


class Sponsored(WireModel):
    """Who paid for a line's placement (hashed: unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    by: Id
