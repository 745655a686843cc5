"""Which of a household's devices says a suggestion: one, never two at once.

The devices that answered a `suggestion.offer` with `taken` contend in one round of the wake
arbiter (`arbitration.Round`), each as a wake of full confidence at the loudness its user was last
heard at (the device nearest its user; -120 dBFS when never heard), then the lowest device id: the
same rules, so the same device wins whatever order the answers came in. A device that declined
never contends; with none taken, nobody speaks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from device_sdk.protocol.fields import new_id
from device_sdk.protocol.messages import Wake
from device_sdk.protocol.suggestions import SuggestionResult

from .arbitration import Contender, Round

SILENT_DB = -120.0


def pick_speaker(
    results: Iterable[SuggestionResult], room: str | None = None, heard_db: Mapping[str, float] | None = None
) -> str | None:
    """The device that says the suggestion, of those that took it (None: every device declined)."""
    heard_db = heard_db or {}
    round_ = Round(room, 0.0)
    for result in results:
        if not result.taken or any(c.device_id == result.device_id for c in round_.contenders):
            continue
        wake = Wake(
            wake_id=result.suggestion_id, session_id=new_id("sug"), confidence=1.0,
            energy_db=max(SILENT_DB, min(0.0, heard_db.get(result.device_id, SILENT_DB))),
        )  # fmt: skip
        round_.contenders.append(Contender(result.device_id, wake))
    return round_.winner().device_id if round_.contenders else None
