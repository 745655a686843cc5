"""The demo catalog: products with aliases, units, prices in minor units, merchants and categories,
and per locale (`zh-CN`) each product's name, spoken aliases and measure word, and each merchant's name."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device_sdk.protocol.messages import Merchant
from device_sdk.protocol.sponsored import Sponsored

MARKETPLACE = Merchant(id="m-marketplace", name="Shop Agent Marketplace")
"""Merchant of record when one cart holds items from several sellers."""
MARKETPLACE_NAMES = {"zh-CN": "购物助手商城"}


class Localised(BaseModel):
    """A product's name, aliases and unit (its measure word) in one locale."""

    model_config = ConfigDict(frozen=True)

    name: str
    aliases: list[str] = Field(default_factory=list)
    unit: str


class Product(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: str
    name: str
    aliases: list[str] = Field(default_factory=list)
    unit: str = "piece"
    price_minor: Annotated[int, Field(ge=0)]
    merchant_id: str
    category: str
    locales: dict[str, Localised] = Field(default_factory=dict)

    def named(self, locale: str) -> Localised:
        """Its name, aliases and unit in `locale` (en-US, and any locale it has none for: its own)."""
        return self.locales.get(locale) or Localised(name=self.name, aliases=self.aliases, unit=self.unit)


class Seller(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    names: dict[str, str] = Field(default_factory=dict)


class Placement(BaseModel):
    """A paid placement: when the agent proposes `sku`, the line says `by` paid for it."""

    model_config = ConfigDict(frozen=True)

    sku: str
    by: str
    kind: Literal["sponsored"]


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int
    currency: str
    merchants: list[Seller]
    products: list[Product]
    placements: list[Placement] = Field(default_factory=list)

    @model_validator(mode="after")
    def _merchants_known(self) -> Catalog:
        known = {m.id for m in self.merchants}
        for product in self.products:
            if product.merchant_id not in known:
                raise ValueError(f"{product.sku}: unknown merchant {product.merchant_id}")
        for placement in self.placements:
            if placement.by not in known or self.product(placement.sku) is None:
                raise ValueError(f"placement {placement.sku} by {placement.by}: unknown product or merchant")
        return self

    def merchant(self, merchant_id: str, locale: str = "en-US") -> Merchant:
        """The seller as a proposal names it, in `locale`."""
        seller = next(m for m in self.merchants if m.id == merchant_id)
        return Merchant(id=seller.id, name=seller.names.get(locale, seller.name))

    def product(self, sku: str) -> Product | None:
        return next((p for p in self.products if p.sku == sku), None)

    def sponsored(self, sku: str) -> Sponsored | None:
        """The disclosure a line of `sku` carries: its paid placement's sponsor, if any."""
        placement = next((p for p in self.placements if p.sku == sku), None)
        return Sponsored(by=placement.by) if placement else None

    def payee(self, seller_ids: set[str], locale: str = "en-US") -> Merchant:
        """The merchant of record: the one seller, or the marketplace for several."""
        if len(seller_ids) == 1:
            return self.merchant(next(iter(seller_ids)), locale)
        return MARKETPLACE.model_copy(update={"name": MARKETPLACE_NAMES.get(locale, MARKETPLACE.name)})


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load a catalog file; without a path, the demo catalog shipped with the package."""
    if path is None:
        return demo_catalog()
    return Catalog.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


@cache
def demo_catalog() -> Catalog:
    text = files("simulators").joinpath("data/catalog.json").read_text(encoding="utf-8")
    return Catalog.model_validate(json.loads(text))
