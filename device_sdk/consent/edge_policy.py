"""The limits a device keeps for its user (its edge policy), as a file states them: read by the device
(`device_sdk.device.edge_policy` checks offers against it) and checked by provisioning before it
copies one beside the device's credentials (`device-sdk provision ... --edge-policy FILE`).

A maximum per order and per day (minor units, per currency: once any maximum is set, a currency it
does not list is refused), the merchants, categories and SKUs allowed (each list that is set must
hold for every line; a line with no category is refused when categories are listed), quiet hours in
the device's own time zone (wrapping midnight when they end before they start), and whether the
device takes agent-initiated suggestions. A TOML or JSON file; a bad one is a `ConfigError` that
names the file and the field.
"""

from __future__ import annotations

import json
import tomllib
from datetime import datetime
from datetime import time as clock_time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.messages import CheckoutProposal

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
SPEND_FILE = "edge-spend.json"


def _time_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_time_zone)]
"""An IANA time zone name that this machine knows (`Asia/Shanghai`)."""


class EdgeRule(StrEnum):
    """Which rule of the edge policy a proposal broke: sent as `edge_policy.<rule>`."""

    MAX_PER_ORDER = "max_per_order"
    MAX_PER_DAY = "max_per_day"
    MERCHANT = "merchant"
    CATEGORY = "category"
    SKU = "sku"
    QUIET_HOURS = "quiet_hours"


class QuietHours(BaseModel):
    """No purchases from `start` to `end` ("HH:MM", the device's time zone; may wrap midnight)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: clock_time
    end: clock_time

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours must start and end at different times")
        return self

    def holds(self, at: clock_time) -> bool:
        if self.start < self.end:
            return self.start <= at < self.end
        return at >= self.start or at < self.end


class EdgePolicy(BaseModel):
    """The limits a device keeps for its user (see the module's docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_per_order: dict[Currency, Annotated[int, Field(ge=0)]] = {}
    max_per_day: dict[Currency, Annotated[int, Field(ge=0)]] = {}
    merchants: frozenset[str] | None = Field(default=None, description="Allowed sellers and payees (ids).")
    categories: frozenset[str] | None = None
    skus: frozenset[str] | None = None
    quiet_hours: QuietHours | None = None
    time_zone: TimeZoneName = Field(default="UTC", description="The device's own time zone, for days and hours.")
    suggestions: bool = Field(default=False, description="Whether the device takes agent-initiated suggestions.")

    @classmethod
    def load(cls, path: str | Path) -> EdgePolicy:
        """The policy in a `.toml` or `.json` file, or `ConfigError` naming the file and what is wrong."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except OSError as exc:
            raise ConfigError(f"cannot read the edge policy {path}: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            kind = "TOML" if path.suffix == ".toml" else "JSON"
            raise ConfigError(f"the edge policy {path} is not valid {kind}: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the file"
            raise ConfigError(f"the edge policy {path}: {where}: {first['msg']}") from None

    def day(self, at: float) -> str:
        return datetime.fromtimestamp(at, ZoneInfo(self.time_zone)).date().isoformat()

    def broken(self, proposal: CheckoutProposal, at: float, spent_today: int) -> EdgeRule | None:
        """The first rule `proposal` breaks at `at` with `spent_today` already spent in its currency."""
        if self.quiet_hours and self.quiet_hours.holds(datetime.fromtimestamp(at, ZoneInfo(self.time_zone)).time()):
            return EdgeRule.QUIET_HOURS
        sellers = {line.seller.id for line in proposal.lines} | {proposal.merchant.id}
        if self.merchants is not None and not sellers <= self.merchants:
            return EdgeRule.MERCHANT
        if self.categories is not None and any(line.category not in self.categories for line in proposal.lines):
            return EdgeRule.CATEGORY
        if self.skus is not None and any(line.sku not in self.skus for line in proposal.lines):
            return EdgeRule.SKU
        day_total = spent_today + proposal.total_minor
        for rule, limits, amount in (
            (EdgeRule.MAX_PER_ORDER, self.max_per_order, proposal.total_minor),
            (EdgeRule.MAX_PER_DAY, self.max_per_day, day_total),
        ):
            if limits and amount > limits.get(proposal.currency, -1):
                return rule
        return None
