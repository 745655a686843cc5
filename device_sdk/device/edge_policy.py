"""The device's own limits (its edge policy): checked on the device before it prompts and before it
signs, whatever the platform sent.

A policy is set at provisioning (`device-sdk provision ... --edge-policy FILE` copies it beside the
device's key) or by its owner (a TOML or JSON file: `EdgeGuard.load(path)`). It holds a maximum per
order and per day (minor units, per currency: a currency not listed is refused once any maximum is
set), the merchants, categories and SKUs allowed (each list set must hold for every line; a line with
no category is refused when categories are listed), quiet hours in the device's own time zone, and
whether suggestions are taken. The day's spend is kept in a small state file beside the policy,
counted only for orders the platform confirmed (`order.result` with an order id).
"""

from __future__ import annotations

import contextlib
import json
import time
import tomllib
from collections.abc import Awaitable, Callable
from datetime import datetime
from datetime import time as clock_time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from device_sdk.locale import locale_for
from device_sdk.protocol.errors import ConfigError, DeviceSdkError, ErrorCode
from device_sdk.protocol.fields import Outcome
from device_sdk.protocol.messages import CheckoutProposal, OrderResult
from device_sdk.state import write_file

from .offer import Offer

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
SPEND_FILE = "edge-spend.json"


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
    time_zone: str = Field(default="UTC", description="The device's own time zone (IANA name), for days and hours.")
    suggestions: bool = Field(default=False, description="Whether the device takes agent-initiated suggestions.")

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

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


class EdgePolicyRefused(DeviceSdkError):
    """The device's own policy refused an offer: nothing was signed; `says` is the reason for the user."""

    code = ErrorCode.EDGE_POLICY

    def __init__(self, rule: EdgeRule, says: str) -> None:
        super().__init__(f"the device's edge policy refuses this offer ({rule.value}): {says}")
        self.rule = rule
        self.says = says


class EdgeGuard:
    """A policy with the device's day's spend (in `spend_file`), and a clock (a test fixes it)."""

    def __init__(self, policy: EdgePolicy, spend_file: Path, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.spend_file = spend_file
        self.clock = clock

    @classmethod
    def load(cls, path: str | Path, clock: Callable[[], float] = time.time) -> EdgeGuard:
        """The policy in `path`, its spend kept beside it."""
        return cls(EdgePolicy.load(path), Path(path).with_name(SPEND_FILE), clock)

    def _ledger(self) -> dict[str, Any]:
        try:
            data = json.loads(self.spend_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"day": "", "spent": {}, "orders": []}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"the edge spend file {self.spend_file} is unreadable: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("spent"), dict):
            raise ConfigError(f"the edge spend file {self.spend_file} is not a spend record")
        return data

    def spent_today(self, currency: str) -> int:
        ledger = self._ledger()
        return int(ledger["spent"].get(currency, 0)) if ledger["day"] == self.policy.day(self.clock()) else 0

    def check(self, offer: Offer) -> None:
        """`EdgePolicyRefused` (with the reason in the offer's locale) when `offer` breaks the policy."""
        proposal = offer.request.proposal
        rule = self.policy.broken(proposal, self.clock(), self.spent_today(proposal.currency))
        if rule is not None:
            raise EdgePolicyRefused(rule, locale_for(proposal.language).edge_policy[rule.value])

    async def hold(self, offer: Offer, decline: Callable[[str], Awaitable[OrderResult]]) -> None:
        """Check `offer` before it is presented; a refused one is declined to the gateway with its rule
        (`edge_policy.<rule>`, recorded in the audit log) and `EdgePolicyRefused` raised."""
        try:
            self.check(offer)
        except EdgePolicyRefused as refused:
            with contextlib.suppress(DeviceSdkError):  # the refusal stands whether or not the gateway answered
                await decline(f"edge_policy.{refused.rule.value}")
            raise

    def count(self, result: OrderResult) -> None:
        """Add a confirmed order to the day's spend (once per order id)."""
        if result.outcome is not Outcome.ORDERED or result.total_minor is None or result.currency is None:
            return
        ledger, today = self._ledger(), self.policy.day(self.clock())
        if ledger["day"] != today:
            ledger = {"day": today, "spent": {}, "orders": []}
        if result.order_id in ledger["orders"]:
            return
        ledger["orders"].append(result.order_id)
        ledger["spent"][result.currency] = int(ledger["spent"].get(result.currency, 0)) + result.total_minor
        write_file(self.spend_file, json.dumps(ledger, sort_keys=True).encode(), 0o600)
