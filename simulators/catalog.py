"""The demo catalog: products with aliases, units, prices in minor units, merchants and categories."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from device_sdk.protocol.messages import Merchant

MARKETPLACE = Merchant(id="m-marketplace", name="Shop Agent Marketplace")
"""Merchant of record when one cart holds items from several sellers."""


class Product(BaseModel):
    model_config = ConfigDict(frozen=True)

    sku: str
    name: str
    aliases: list[str] = Field(default_factory=list)
    unit: str = "piece"
    price_minor: Annotated[int, Field(ge=0)]
    merchant_id: str
    category: str


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int
    currency: str
    merchants: list[Merchant]
    products: list[Product]

    @model_validator(mode="after")
    def _merchants_known(self) -> Catalog:
        known = {m.id for m in self.merchants}
        for product in self.products:
            if product.merchant_id not in known:
                raise ValueError(f"{product.sku}: unknown merchant {product.merchant_id}")
        return self

    def merchant(self, merchant_id: str) -> Merchant:
        return next(m for m in self.merchants if m.id == merchant_id)

    def product(self, sku: str) -> Product | None:
        return next((p for p in self.products if p.sku == sku), None)

    def payee(self, seller_ids: set[str]) -> Merchant:
        """The merchant of record: the one seller, or the marketplace for several."""
        return self.merchant(next(iter(seller_ids))) if len(seller_ids) == 1 else MARKETPLACE


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load a catalog file; without a path, the demo catalog shipped with the package."""
    if path is None:
        return demo_catalog()
    return Catalog.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


@cache
def demo_catalog() -> Catalog:
    text = files("simulators").joinpath("data/catalog.json").read_text(encoding="utf-8")
    return Catalog.model_validate(json.loads(text))
