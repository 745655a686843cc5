"""The device's own limits (its edge policy, `device_sdk.consent.edge_policy`): checked on the device
before it presents an offer and before it signs, whatever the platform sent.

A policy is set at provisioning (`device-sdk provision ... --edge-policy FILE` checks it and copies it
beside the device's credentials) or by its owner (a TOML or JSON file: `DeviceClient(edge_policy=PATH)`).
An offer that breaks it is refused with a reason in the offer's locale, never signed, and declined to
the gateway as `edge_policy.<rule>` (recorded in the audit log). The day's spend is kept in a small
state file beside the policy (`<policy>.spend.json`), counted only for orders the platform confirmed
(an `order.result` with an order id), per day in the device's time zone.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from device_sdk.consent.edge_policy import EdgePolicy, EdgeRule
from device_sdk.locale import locale_for
from device_sdk.protocol.errors import ConfigError, DeviceSdkError, ErrorCode
from device_sdk.protocol.fields import Outcome
from device_sdk.protocol.messages import OrderResult
from device_sdk.state import write_file

from .offer import Offer


def spend_file_for(policy_file: Path) -> Path:
    """Where the day's spend of the device with `policy_file` is kept: beside it."""
    return policy_file.with_name(f"{policy_file.stem}.spend.json")


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
        return cls(EdgePolicy.load(path), spend_file_for(Path(path)), clock)

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
