"""Agent-initiated sessions ("suggestions"): the platform offers one to a household's devices.

`suggestion.offer` (gateway -> device, on its down topic) asks a device whether it would say a
suggestion now; the device answers `suggestion.result`: taken, or declined with a reason
(`opted_out`, `quiet_hours`, `cap`, `busy`) and nothing spoken. Of the devices that would take it,
the household's arbitration picks one (the wake arbitration rules; never two at once). A suggestion
never orders by itself: the device says it is a suggestion, and the user's usual confirmation signs
a mandate that carries `initiated_by: "agent"` (docs/consent.md, "Suggestions").
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, model_validator

from .fields import Id, Name, WireMessage

INITIATED_BY_AGENT = "agent"
"""What a suggestion's mandate and audit records carry in `initiated_by`."""


class DeclineReason(StrEnum):
    """Why a device did not take a suggestion (nothing was spoken)."""

    OPTED_OUT = "opted_out"
    QUIET_HOURS = "quiet_hours"
    CAP = "cap"
    BUSY = "busy"


class SuggestionOffer(WireMessage):
    """The platform suggests `sku` (a reorder of something bought before) to a device."""

    type: Literal["suggestion.offer"] = "suggestion.offer"
    suggestion_id: Id
    sku: Id
    name: Name = Field(description="The item as the device says it.")
    quantity: Annotated[int, Field(ge=1, le=99)] = 1
    reason: Literal["reorder"] = "reorder"
    initiated_by: Literal["agent"] = "agent"


class SuggestionResult(WireMessage):
    """A device's answer to `suggestion.offer`: taken (it will speak if arbitration picks it), or declined."""

    type: Literal["suggestion.result"] = "suggestion.result"
    suggestion_id: Id
    device_id: Id
    taken: bool
    declined_reason: DeclineReason | None = Field(default=None, description="Set exactly when not taken.")

    @model_validator(mode="after")
    def _reason_when_declined(self) -> SuggestionResult:
        if (self.declined_reason is None) != self.taken:
            raise ValueError("a suggestion.result carries declined_reason exactly when it is not taken")
        return self
