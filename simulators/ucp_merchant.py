"""A UCP merchant stand-in: a real HTTP server on loopback with its own ES256 key.

It publishes `/.well-known/ucp` (the shopping service over REST, the checkout and AP2 mandate
capabilities, one payment handler, and its public key under `keys` with a `kid`, never `d`), serves
checkout sessions priced from the demo catalog (create, get, update, complete) and orders, and signs
every checkout state it returns with a detached JWS over its JCS form (`ap2.merchant_authorization`).
It completes a checkout only with an AP2 checkout mandate and payment mandate signed by the platform
key it was given, naming this checkout and its hash, and charges once per idempotency key.

`faults` makes it misbehave for tests: `bad_signature` (signs with a key it does not publish),
`totals` (a total that is not the sum of its entries), `currency` (an unknown currency), `expired`
(a checkout already expired), `change_after_confirm` (re-prices the cart when it is read again) and
`escalate` (needs the buyer on its own page: `requires_escalation` with its `continue_url`) and
`lose_complete_answer` (charges on the first complete, then answers 500 as if the answer was lost).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from device_sdk.platform.ucp.client import AP2, SHOPPING, VERSION
from device_sdk.platform.ucp.signing import checkout_sha256, public_jwk, sign_detached

from .catalog import Catalog

HANDLER = "shop-wallet"
SPEC = "https://ucp.dev/specification"
FAULTS = frozenset(
    {"bad_signature", "totals", "currency", "expired", "change_after_confirm", "escalate", "lose_complete_answer"}
)


class UcpMerchant:
    """Run with `async with UcpMerchant(catalog, platform_jwks=...) as merchant:`; `merchant.url`."""

    def __init__(
        self, catalog: Catalog, *, platform_jwks: dict[str, Any] | None = None, faults: frozenset[str] = frozenset()
    ) -> None:
        unknown = faults - FAULTS
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        self.catalog = catalog
        self.platform_jwks = platform_jwks
        self.faults = faults
        self.key = ECKey.generate_key("P-256")
        self.kid = f"merchant-{secrets.token_hex(4)}"
        self.checkouts: dict[str, dict[str, Any]] = {}
        self.orders: dict[str, dict[str, Any]] = {}
        self.charges: list[str] = []
        """One entry per charge taken (an order id): what `nothing charged` is checked against."""
        self.received: list[tuple[str, dict[str, Any]]] = []
        """Each request body as it arrived: (create, update or complete, the body)."""
        self._by_key: dict[str, dict[str, Any]] = {}
        self._reads: dict[str, int] = {}
        self.url = ""
        app = web.Application()
        app.router.add_get("/.well-known/ucp", self._profile)
        app.router.add_post("/ucp/checkout-sessions", self._create)
        app.router.add_get("/ucp/checkout-sessions/{id}", self._get)
        app.router.add_put("/ucp/checkout-sessions/{id}", self._update)
        app.router.add_post("/ucp/checkout-sessions/{id}/complete", self._complete)
        app.router.add_get("/ucp/orders/{id}", self._order)
        self._runner = web.AppRunner(app)

    async def __aenter__(self) -> UcpMerchant:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()

    def profile(self) -> dict[str, Any]:
        """The business profile as published at `/.well-known/ucp`."""
        return {
            "ucp": {
                "version": VERSION,
                "services": {
                    SHOPPING: [{"version": VERSION, "spec": SPEC, "transport": "rest", "endpoint": f"{self.url}/ucp"}]
                },
                "capabilities": self._capabilities(),
                "payment_handlers": {"dev.device_sdk.wallet": [{"id": HANDLER, "version": VERSION}]},
            },
            "keys": [public_jwk(self.key, self.kid)],
        }

    def _capabilities(self) -> dict[str, Any]:
        return {
            "dev.ucp.shopping.checkout": [{"version": VERSION, "schema": f"{SPEC}/checkout"}],
            AP2: [{"version": VERSION, "schema": f"{SPEC}/ap2", "extends": "dev.ucp.shopping.checkout"}],
        }

    # handlers ------------------------------------------------------------------------------

    async def _profile(self, request: web.Request) -> web.Response:
        return web.json_response(self.profile())

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(("create", body))
        lines = self._lines(body)
        if isinstance(lines, str):
            return _error(400, lines)
        checkout_id = f"chk_{secrets.token_hex(8)}"
        expires = time.time() + (-60 if "expired" in self.faults else 1800)
        checkout = {
            "ucp": {
                "version": VERSION,
                "capabilities": self._capabilities(),
                "payment_handlers": {"dev.device_sdk.wallet": [{"id": HANDLER, "version": VERSION}]},
            },
            "id": checkout_id,
            "status": "incomplete",
            "currency": "XYZ" if "currency" in self.faults else self.catalog.currency,
            "line_items": lines,
            "totals": _totals(
                sum(line["totals"][0]["amount"] for line in lines), skew=100 if "totals" in self.faults else 0
            ),
            "links": [
                {"type": "terms_of_service", "url": f"{self.url}/terms"},
                {"type": "privacy_policy", "url": f"{self.url}/privacy"},
            ],
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z"),
            "continue_url": f"{self.url}/checkout/{checkout_id}",
            "messages": [{"type": "info", "content": "Prices include VAT."}],
        }
        self.checkouts[checkout_id] = checkout
        return self._signed(checkout, status=201)

    def _lines(self, body: dict[str, Any]) -> list[dict[str, Any]] | str:
        """The line items asked for, priced from the catalog, or why not."""
        lines = []
        for n, asked in enumerate(body.get("line_items") or []):
            product = self.catalog.product(str(asked["item"]["id"]))
            if product is None:
                return f"no product {asked['item']['id']}"
            name = product.named("en-US").name
            lines.append(
                _line(asked.get("id") or f"li_{n + 1}", product.sku, name, product.price_minor, int(asked["quantity"]))
            )
        return lines or "no line items"

    async def _get(self, request: web.Request) -> web.Response:
        checkout = self.checkouts.get(request.match_info["id"])
        if checkout is None:
            return _error(404, "no such checkout")
        self._reads[checkout["id"]] = self._reads.get(checkout["id"], 0) + 1
        if "change_after_confirm" in self.faults and checkout["status"] == "ready_for_complete":
            first = checkout["line_items"][0]
            repriced = _line(
                first["id"],
                first["item"]["id"],
                first["item"]["title"],
                first["item"]["price"] + 500,
                first["quantity"],
            )
            checkout["line_items"][0] = repriced
            checkout["totals"] = _totals(sum(line["totals"][0]["amount"] for line in checkout["line_items"]))
        return self._signed(checkout)

    async def _update(self, request: web.Request) -> web.Response:
        checkout = self.checkouts.get(request.match_info["id"])
        if checkout is None:
            return _error(404, "no such checkout")
        body = await request.json()
        self.received.append(("update", body))
        lines = self._lines(body)
        if isinstance(lines, str):
            return _error(400, lines)
        if lines != checkout["line_items"]:
            checkout["line_items"] = lines
            checkout["totals"] = _totals(sum(line["totals"][0]["amount"] for line in lines))
        instruments = (body.get("payment") or {}).get("instruments") or []
        if any(i.get("handler_id") != HANDLER for i in instruments):
            return _error(400, f"this merchant takes {HANDLER} only")
        if instruments:
            checkout["payment"] = {"instruments": instruments}
            checkout["status"] = "requires_escalation" if "escalate" in self.faults else "ready_for_complete"
        return self._signed(checkout)

    async def _complete(self, request: web.Request) -> web.Response:
        checkout = self.checkouts.get(request.match_info["id"])
        if checkout is None:
            return _error(404, "no such checkout")
        key = request.headers.get("Idempotency-Key", "")
        if key in self._by_key:
            return self._signed(self._by_key[key])
        if checkout["status"] != "ready_for_complete":
            return _error(409, f"the checkout is {checkout['status']}")
        body = await request.json()
        self.received.append(("complete", body))
        refusal = self._check_mandates(checkout, body)
        if refusal is not None:
            return _error(403, refusal)
        order_id = f"ord_{secrets.token_hex(8)}"
        permalink = f"{self.url}/orders/{order_id}"
        self.charges.append(order_id)
        checkout["status"] = "completed"
        checkout["order"] = {"id": order_id, "permalink_url": permalink}
        self.orders[order_id] = {
            "ucp": {"version": VERSION, "capabilities": {"dev.ucp.shopping.order": [{"version": VERSION}]}},
            "id": order_id,
            "checkout_id": checkout["id"],
            "permalink_url": permalink,
            "line_items": [
                {
                    **{k: line[k] for k in ("id", "item", "totals")},
                    "quantity": {"total": line["quantity"], "fulfilled": 0},
                    "status": "processing",
                }
                for line in checkout["line_items"]
            ],
            "fulfillment": {"expectations": [], "events": []},
            "currency": checkout["currency"],
            "totals": checkout["totals"],
        }
        self._by_key[key] = checkout
        if "lose_complete_answer" in self.faults and len(self.charges) == 1:
            return _error(500, "the answer was lost")
        return self._signed(checkout)

    async def _order(self, request: web.Request) -> web.Response:
        order = self.orders.get(request.match_info["id"])
        return web.json_response(order) if order is not None else _error(404, "no such order")

    # checks and signing ------------------------------------------------------------------

    def _check_mandates(self, checkout: dict[str, Any], body: dict[str, Any]) -> str | None:
        """Why the mandates do not authorise this checkout, or None."""
        if self.platform_jwks is None:
            return "no platform key is trusted"
        instruments = (body.get("payment") or {}).get("instruments") or [{}]
        tokens = [
            (body.get("ap2") or {}).get("checkout_mandate"),
            (instruments[0].get("credential") or {}).get("token"),
        ]
        for token in tokens:
            if not isinstance(token, str):
                return "a mandate is missing"
            try:
                claims = _issuer_claims(token, self.platform_jwks)
            except (JoseError, ValueError, KeyError, StopIteration):
                return "a mandate's signature does not verify"
            if claims.get("checkout_id") != checkout["id"] or claims.get("checkout_sha256") != checkout_sha256(
                checkout
            ):
                return "a mandate names another checkout"
        return None

    def _signed(self, checkout: dict[str, Any], status: int = 200) -> web.Response:
        key = ECKey.generate_key("P-256") if "bad_signature" in self.faults else self.key
        state = {name: value for name, value in checkout.items() if name != "ap2"}
        state["ap2"] = {"merchant_authorization": sign_detached(state, key, self.kid)}
        return web.json_response(state, status=status)


def _line(line_id: str, sku: str, title: str, price: int, quantity: int) -> dict[str, Any]:
    amount = price * quantity
    return {
        "id": line_id,
        "item": {"id": sku, "title": title, "price": price},
        "quantity": quantity,
        "totals": [{"type": "subtotal", "amount": amount}, {"type": "total", "amount": amount}],
    }


def _totals(subtotal: int, skew: int = 0) -> list[dict[str, Any]]:
    return [
        {"type": "subtotal", "display_text": "Subtotal", "amount": subtotal},
        {"type": "fulfillment", "display_text": "Shipping", "amount": 0},
        {"type": "total", "display_text": "Total", "amount": subtotal + skew},
    ]


def _issuer_claims(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The issuer-signed claims of an SD-JWT, checked against `jwks` (disclosures not needed here)."""
    issued = token.split("~")[0]
    header = json.loads(base64.urlsafe_b64decode(issued.split(".")[0] + "=="))
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    key = ECKey.import_key({name: jwk[name] for name in ("kty", "crv", "x", "y")})
    claims = json.loads(jws.deserialize_compact(issued, key, algorithms=["ES256"]).payload)
    if not isinstance(claims, dict):
        raise ValueError("claims are not an object")
    return claims


def _error(status: int, text: str) -> web.Response:
    return web.json_response(
        {"messages": [{"type": "error", "code": "invalid", "content": text, "severity": "recoverable"}]}, status=status
    )
