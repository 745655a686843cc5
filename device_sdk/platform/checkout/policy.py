"""The risk policy: what may be bought, through which channel, how much, and with which confirmation.

Layered: the built-in defaults, then the top level of a TOML file, then that file's
`[devices.<device id>]` table for one device. The settings, their defaults and refusals:

- `voice_cap_minor` = `{CNY = 50000}` (500.00 CNY per order): above it, or with no cap for the
  currency, a `voice` or `text` confirmation gives `step_up_required`; `voice_pin`, `lens_tap`
  and `phone_sheet` are the stronger modalities.
- `daily_cap_minor` = `{CNY = 1000000}` (10,000.00 CNY) per device in any 24 hours: `daily_cap` (blocked); a
  currency with no cap is blocked too.
- `orders_per_minute` = 5 per device: `velocity_limit` (blocked).
- `blocked_categories` = `["alcohol"]`: `category_blocked` (blocked); so is a line with no category
  unless `allow_uncategorized = true`.
- `merchants` = `["*"]` (any): `merchant_not_allowed` (blocked), checked for the payee and every seller.
- `payment_handlers` = `["shop-wallet"]`: `payment_channel_not_allowed` (blocked); a raw card
  number never passes.
- `placements` = `{}`: the paid placements sold, SKU to sponsor's merchant id; a line of one that
  does not carry `sponsored.by` of its sponsor gives `sponsored_not_disclosed`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_sdk.protocol.errors import ConfigError, ConsentError, ErrorCode
from device_sdk.protocol.fields import Modality
from device_sdk.protocol.messages import CheckoutProposal
from device_sdk.protocol.wire_errors import first_error

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Amount = Annotated[int, Field(ge=0)]
WEAK_MODALITIES = frozenset({Modality.VOICE, Modality.TEXT})
STRONG_MODALITIES = (Modality.VOICE_PIN, Modality.LENS_TAP, Modality.PHONE_SHEET)
_PAN = re.compile(r"\d[\d -]{11,22}\d")


class RiskPolicy(BaseModel):
    """The effective policy for one device (see the module's table for the defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    voice_cap_minor: dict[Currency, Amount] = Field(default_factory=lambda: {"CNY": 50_000})
    daily_cap_minor: dict[Currency, Amount] = Field(default_factory=lambda: {"CNY": 1_000_000})
    orders_per_minute: Annotated[int, Field(ge=0)] = 5
    blocked_categories: list[str] = Field(default_factory=lambda: ["alcohol"])
    allow_uncategorized: bool = False
    merchants: list[str] = Field(default_factory=lambda: ["*"])
    payment_handlers: list[str] = Field(default_factory=lambda: ["shop-wallet"])
    placements: dict[str, str] = Field(default_factory=dict)

    def modalities(self, proposal: CheckoutProposal) -> list[Modality]:
        """How this proposal may be confirmed: voice (and text, and a button press after the spoken
        read-back) too when it is within the voice cap."""
        strong = list(STRONG_MODALITIES)
        spoken = [Modality.VOICE, Modality.TEXT, Modality.BUTTON]  # all confirm the read-back alone
        return [*spoken, *strong] if self.voice_allowed(proposal) else strong

    def voice_allowed(self, proposal: CheckoutProposal) -> bool:
        cap = self.voice_cap_minor.get(proposal.currency)
        return cap is not None and proposal.total_minor <= cap

    def check_proposal(self, proposal: CheckoutProposal) -> None:
        """Refuse a cart this policy never allows (categories, merchants), whoever confirms it."""
        for line in proposal.lines:
            sponsor = self.placements.get(line.sku)
            if sponsor is not None and (line.sponsored is None or line.sponsored.by != sponsor):
                raise ConsentError(f"{line.sku} is a paid placement of {sponsor}: its line must say so",
                                   ErrorCode.SPONSORED_NOT_DISCLOSED)  # fmt: skip
            if line.category is None and not self.allow_uncategorized:
                raise ConsentError(f"{line.sku} has no category", ErrorCode.CATEGORY_BLOCKED)
            if line.category in self.blocked_categories:
                raise ConsentError(f"{line.category} may not be bought here ({line.sku})", ErrorCode.CATEGORY_BLOCKED)
        if "*" not in self.merchants:
            for merchant in {proposal.merchant.id, *(line.seller.id for line in proposal.lines)}:
                if merchant not in self.merchants:
                    raise ConsentError(f"merchant {merchant} is not allowed", ErrorCode.MERCHANT_NOT_ALLOWED)

    def check_payment(self, handler: str) -> None:
        if _PAN.fullmatch(handler.strip()):
            raise ConsentError("a raw card number is never a payment channel", ErrorCode.PAYMENT_CHANNEL_NOT_ALLOWED)
        if handler not in self.payment_handlers:
            raise ConsentError(f"payment channel {handler!r} is not approved", ErrorCode.PAYMENT_CHANNEL_NOT_ALLOWED)

    def check_modality(self, proposal: CheckoutProposal, modality: Modality) -> None:
        if modality in WEAK_MODALITIES and not self.voice_allowed(proposal):
            cap = self.voice_cap_minor.get(proposal.currency)
            limit = "no voice-only orders" if cap is None else f"the voice cap is {cap} minor units"
            raise ConsentError(f"{limit}: confirm with a PIN, a tap or the phone", ErrorCode.STEP_UP_REQUIRED)

    def check_daily(self, proposal: CheckoutProposal, spent_minor: int) -> None:
        cap = self.daily_cap_minor.get(proposal.currency)
        if cap is None:
            raise ConsentError(f"no daily cap is set for {proposal.currency}", ErrorCode.DAILY_CAP)
        if spent_minor + proposal.total_minor > cap:
            raise ConsentError(f"over the daily cap of {cap} minor units ({spent_minor} spent)", ErrorCode.DAILY_CAP)

    def check_velocity(self, orders_last_minute: int) -> None:
        if orders_last_minute >= self.orders_per_minute:
            raise ConsentError(f"at most {self.orders_per_minute} orders a minute", ErrorCode.VELOCITY_LIMIT)


class PolicyBook:
    """The policy file's layers; `for_device` gives one device's effective `RiskPolicy`.

    Every layer is validated when the book is made, so a typo fails at start, not at checkout.
    """

    def __init__(self, base: dict[str, Any] | None = None, devices: dict[str, dict[str, Any]] | None = None) -> None:
        self._base = base or {}
        self.default = _validated(self._base, ())
        self._policies = {
            d: _validated({**self._base, **layer}, ("devices", d)) for d, layer in (devices or {}).items()
        }

    def for_device(self, device_id: str) -> RiskPolicy:
        return self._policies.get(device_id, self.default)

    @classmethod
    def parse(cls, text: str, source: str = "policy") -> PolicyBook:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not TOML: {exc}") from None
        devices = data.pop("devices", {})
        if not isinstance(devices, dict) or not all(isinstance(layer, dict) for layer in devices.values()):
            raise ConfigError(f"{source}: devices: a table of tables, one per device id")
        try:
            return cls(data, devices)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc.text}") from None

    @classmethod
    def load(cls, path: str | Path | None) -> PolicyBook:
        """The policy in the TOML file at `path`; the built-in defaults without one."""
        if path is None:
            return cls()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the policy {path}: {exc.strerror}") from None
        return cls.parse(text, str(path))


def _validated(settings: dict[str, Any], where: tuple[str, ...]) -> RiskPolicy:
    try:
        return RiskPolicy(**settings)
    except ValidationError as exc:
        raise ConfigError(first_error(exc, *where)) from None
