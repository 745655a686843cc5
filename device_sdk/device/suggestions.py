"""A device's side of agent-initiated suggestions: whether it takes one, and what it says.

The settings are the device's own, kept in a small JSON file (mode 600): whether its user opted in
(off by default), its quiet hours in its own time zone (22:00-08:00 by default) and a daily cap. A
device takes a `suggestion.offer` only when opted in (and its edge policy, if any, allows
suggestions), outside its quiet hours, under the cap and with no session running on it; otherwise
it declines with the reason and says nothing. A reply such as "stop suggestions" / "别再推荐了"
turns them off on the device.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime
from datetime import time as clock_time
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_sdk.consent.edge_policy import EdgePolicy, QuietHours, TimeZoneName
from device_sdk.locale import locale_for
from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.suggestions import DeclineReason, SuggestionOffer, SuggestionResult
from device_sdk.state import write_file

DEFAULT_QUIET = QuietHours(start=clock_time(22, 0), end=clock_time(8, 0))
DEFAULT_CAP = 2


def quiet_hours(text: str) -> QuietHours:
    """ "HH:MM-HH:MM" as quiet hours, or `ConfigError` saying what a time looks like."""
    start, sep, end = text.partition("-")
    if not sep:
        raise ConfigError(f"quiet hours {text!r} are not HH:MM-HH:MM")
    try:
        return QuietHours(start=clock_of(start), end=clock_of(end))
    except ValidationError as exc:
        raise ConfigError(f"quiet hours {text!r}: {exc.errors()[0]['msg']}") from None


def clock_of(text: str) -> clock_time:
    """ "HH:MM" as a time of day, or `ConfigError`."""
    try:
        hours, minutes = text.strip().split(":")
        if len(hours) != 2 or len(minutes) != 2:
            raise ValueError
        return clock_time(int(hours), int(minutes))
    except ValueError:
        raise ConfigError(f"{text!r} is not a time of day (HH:MM, 00:00 to 23:59)") from None


class SuggestionSettings(BaseModel):
    """The device's suggestion settings (see the module's docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    opted_in: bool = False
    quiet_hours: QuietHours = DEFAULT_QUIET
    time_zone: TimeZoneName = "UTC"
    daily_cap: Annotated[int, Field(ge=0, le=50)] = DEFAULT_CAP


class SuggestionGate:
    """The device's settings and its count of suggestions taken today, in `path`; a test fixes `clock`."""

    def __init__(self, path: Path, *, edge: EdgePolicy | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.edge = edge
        self.clock = clock

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the suggestion settings {self.path} are unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"the suggestion settings {self.path} are not an object")
        return data

    @property
    def settings(self) -> SuggestionSettings:
        try:
            return SuggestionSettings.model_validate(self._read().get("settings", {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise ConfigError(f"the suggestion settings {self.path}: {first['loc']}: {first['msg']}") from None

    def save(self, settings: SuggestionSettings) -> None:
        data = self._read()
        data["settings"] = settings.model_dump(mode="json")
        write_file(self.path, json.dumps(data, sort_keys=True).encode(), 0o600)

    def _today(self, settings: SuggestionSettings) -> str:
        return datetime.fromtimestamp(self.clock(), ZoneInfo(settings.time_zone)).date().isoformat()

    def taken_today(self) -> int:
        data, settings = self._read(), self.settings
        taken = data.get("taken")
        if isinstance(taken, dict) and taken.get("day") == self._today(settings):
            return int(taken.get("count", 0))
        return 0

    def declined_for(self, *, busy: bool) -> DeclineReason | None:
        """Why the device would not take a suggestion now (None: it would)."""
        settings = self.settings
        if not settings.opted_in or (self.edge is not None and not self.edge.suggestions):
            return DeclineReason.OPTED_OUT
        local = datetime.fromtimestamp(self.clock(), ZoneInfo(settings.time_zone)).time()
        if settings.quiet_hours.holds(local):
            return DeclineReason.QUIET_HOURS
        if self.taken_today() >= settings.daily_cap:
            return DeclineReason.CAP
        if busy:
            return DeclineReason.BUSY
        return None

    def answer(self, offer: SuggestionOffer, device_id: str, *, busy: bool) -> SuggestionResult:
        """The device's `suggestion.result` for `offer` (nothing is counted or said here)."""
        reason = self.declined_for(busy=busy)
        return SuggestionResult(
            suggestion_id=offer.suggestion_id, device_id=device_id, taken=reason is None, declined_reason=reason
        )

    def count(self) -> None:
        """Count a suggestion the device said (toward the daily cap)."""
        data, settings = self._read(), self.settings
        day = self._today(settings)
        data["taken"] = {"day": day, "count": self.taken_today() + 1}
        write_file(self.path, json.dumps(data, sort_keys=True).encode(), 0o600)

    def stop_asked(self, reply: str | None, locale: str) -> bool:
        """Whether `reply` asks to stop suggestions; if so they are turned off on this device."""
        if reply is None:
            return False
        phrases = locale_for(locale).suggestion.stop
        if locale_for(locale).normalise_reply(reply) not in {locale_for(locale).normalise_reply(p) for p in phrases}:
            return False
        self.save(self.settings.model_copy(update={"opted_in": False}))
        return True


def suggestion_text(offer: SuggestionOffer, locale: str, unit: str) -> str:
    """What the device says: that this is a suggestion, then the suggestion."""
    words = locale_for(locale)
    body = words.suggestion.reorder.format(qty=offer.quantity, unit=words.unit(unit, offer.quantity), name=offer.name)
    return words.suggestion.intro.format(text=body)
