"""`device-sdk demo --merchant ucp`: the demo's order placed through the UCP merchant stand-in.

The device speaks our protocol as in every demo; behind the gateway the checkout is `UcpCheckout`,
talking UCP to `UcpMerchant` on loopback. With `out`, the run is written there as JSON files that
anyone can check with UCP's own models: the merchant's `/.well-known/ucp` profile
(`ucp-profile.json`), each checkout state as the merchant returned it (`checkout-NN-STATUS.json`),
the order (`order.json`), the mandates (`mandates.json`) and the platform's public JWKS
(`platform-jwks.json`); not our request bodies.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from device_sdk.platform.checkout.verifier import ConsentVerifier
from device_sdk.platform.ucp.backend import UcpCheckout
from device_sdk.platform.ucp.client import UcpClient
from device_sdk.platform.ucp.mandates import MandateIssuer

from .catalog import demo_catalog
from .scenario import DemoResult, run_demo
from .ucp_merchant import UcpMerchant


async def run_ucp_demo(
    *args: Any, out: Path | None = None, report: Callable[[str], None] | None = None, **kwargs: Any
) -> DemoResult:
    """`run_demo(*args, **kwargs)` with the order placed at a UCP merchant; `report` gets the
    permalink of the merchant's order and where the objects were written. The platform's mandate
    key is kept beside the demo's store file (`<store>.ucp-platform.pem`), so its JWKS stays the same."""
    store = kwargs.get("audit")
    if isinstance(store, str | Path) and "://" not in str(store):
        issuer = MandateIssuer.load_or_create(Path(store).with_name(f"{Path(store).name}.ucp-platform.pem"))
    else:
        issuer = MandateIssuer()
    made: list[UcpCheckout] = []
    async with UcpMerchant(demo_catalog(), platform_jwks=issuer.jwks()) as merchant:

        def make(verifier: ConsentVerifier) -> UcpCheckout:
            made.append(UcpCheckout(verifier, UcpClient(merchant.url), issuer))
            return made[-1]

        result = await run_demo(*args, make_checkout=make, **kwargs)
        checkout = made[-1]
        for order in checkout.ucp_orders:
            if report is not None:
                report(f"UCP order {order['id']}: {order['permalink_url']} (merchant {merchant.url})")
        if out is not None:
            write_run(out, merchant.profile(), checkout)
            if report is not None:
                report(f"UCP/AP2 objects written to {out}")
    return result


def write_run(out: Path, profile: dict[str, Any], checkout: UcpCheckout) -> list[Path]:
    """Write the run's UCP/AP2 objects into `out` (made if missing); the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"ucp-profile.json": profile, "platform-jwks.json": checkout.issuer.jwks()}
    for n, state in enumerate(checkout.states, 1):
        files[f"checkout-{n:02d}-{state.get('status', 'unknown')}.json"] = state
    for n, state in enumerate(checkout.escalations, 1):  # our policy's step-up, as UCP says it
        files[f"escalation-{n:02d}-requires_escalation.json"] = state
    for n, order in enumerate(checkout.ucp_orders, 1):
        files["order.json" if n == 1 else f"order-{n:02d}.json"] = order
    if checkout.mandates:
        files["mandates.json"] = checkout.mandates
    written = []
    for name, value in files.items():
        path = out / name
        path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
