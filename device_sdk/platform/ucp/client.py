"""A UCP merchant over HTTP: discovery through `/.well-known/ucp`, then checkout sessions.

`discover` reads the merchant's profile (its shopping service endpoint, capabilities, payment
handlers and the public keys it signs with, under `keys`); `create`, `get`, `update` and `complete`
are the REST checkout-session calls; `order` reads an order. Each returns the JSON object as the
merchant sent it: checking it is `checks.py`'s work. A 4xx answer is the merchant's refusal
(`CheckoutError`); a 5xx, a timeout or a lost connection leaves the outcome unknown (`ConnectionError`,
`aiohttp.ClientError`, `TimeoutError`): a completion asked again under the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from device_sdk.protocol.errors import CheckoutError, ErrorCode

VERSION = "2026-01-11"
"""The UCP version this adapter speaks."""
SHOPPING = "dev.ucp.shopping"
AP2 = "dev.ucp.shopping.ap2_mandate"


@dataclass(frozen=True)
class MerchantProfile:
    """What discovery found: the profile as published, the REST endpoint, keys and payment handlers."""

    raw: dict[str, Any]
    endpoint: str
    keys: list[dict[str, Any]]
    handlers: list[str]


class UcpClient:
    """Talks to the UCP merchant at `base_url` (scheme and host); one HTTP session per call."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, agent: str = "device-sdk") -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.headers = {"UCP-Agent": f'profile="urn:{agent}"', "Content-Type": "application/json"}
        self.profile: MerchantProfile | None = None

    async def discover(self) -> MerchantProfile:
        raw = await self._call("GET", f"{self.base_url}/.well-known/ucp")
        try:
            ucp = raw["ucp"]
            rest = next(s for s in ucp["services"][SHOPPING] if s.get("transport") == "rest")
            handlers = [h["id"] for entries in ucp["payment_handlers"].values() for h in entries]
            keys = [dict(k) for k in raw["keys"]]
            has_ap2 = AP2 in ucp["capabilities"]
        except (KeyError, TypeError, StopIteration):
            raise CheckoutError(
                "the merchant's UCP profile lacks services, handlers or keys", ErrorCode.BAD_PROPOSAL
            ) from None
        if any("d" in key for key in keys):
            raise CheckoutError("the merchant's profile publishes private key material", ErrorCode.MERCHANT_UNVERIFIED)
        if not has_ap2:
            raise CheckoutError("the merchant does not offer AP2 mandates", ErrorCode.MERCHANT_UNVERIFIED)
        self.profile = MerchantProfile(raw, str(rest["endpoint"]).rstrip("/"), keys, handlers)
        return self.profile

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", f"{await self._endpoint()}/checkout-sessions", body)

    async def get(self, checkout_id: str) -> dict[str, Any]:
        return await self._call("GET", f"{await self._endpoint()}/checkout-sessions/{checkout_id}")

    async def update(self, checkout_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PUT", f"{await self._endpoint()}/checkout-sessions/{checkout_id}", body)

    async def complete(self, checkout_id: str, body: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        url = f"{await self._endpoint()}/checkout-sessions/{checkout_id}/complete"
        return await self._call("POST", url, body, {"Idempotency-Key": idempotency_key})

    async def order(self, order_id: str) -> dict[str, Any]:
        return await self._call("GET", f"{await self._endpoint()}/orders/{order_id}")

    async def _endpoint(self) -> str:
        profile = self.profile or await self.discover()
        return profile.endpoint

    async def _call(
        self, method: str, url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession(timeout=self.timeout, headers=self.headers) as session,
            session.request(method, url, json=body, headers=headers) as response,
        ):
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = None
            if response.status >= 500:  # the merchant may or may not have acted: not a refusal
                raise ConnectionError(f"the merchant answered {method} with {response.status}")
            if response.status >= 400 or not isinstance(answer, dict):
                text = answer.get("messages") if isinstance(answer, dict) else None
                raise CheckoutError(
                    f"the merchant answered {method} with {response.status}: {text}", ErrorCode.PAYMENT_DECLINED
                )
            return answer
