"""Issue 20: our checkout on a UCP merchant, with AP2 mandates issued after the device's confirmation.

Everything runs for real: the UCP merchant stand-in is an aiohttp server on loopback with its own
ES256 key, the device speaks our protocol over an embedded broker, the mandates are verified with the
SD-JWT reference implementation (`sd-jwt`, on jwcrypto: not the joserfc code that issued them), and
every UCP object sent or accepted is validated by `ucp-sdk`'s own pydantic models.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import pytest
from joserfc.jwk import ECKey
from jwcrypto.jwk import JWK
from pydantic import Field
from sd_jwt.verifier import SDJWTVerifier
from ucp_sdk.models.schemas import profile as ucp_profile
from ucp_sdk.models.schemas import ucp as ucp_meta
from ucp_sdk.models.schemas.common import payment_ap2_mandate as ap2
from ucp_sdk.models.schemas.shopping import checkout_complete_request, checkout_create_request, checkout_update_request
from ucp_sdk.models.schemas.shopping import order as ucp_order

from device_sdk.consent.readback import confirmation_request
from device_sdk.platform.ucp.backend import UcpCheckout
from device_sdk.platform.ucp.checks import check_state
from device_sdk.platform.ucp.client import UcpClient
from device_sdk.platform.ucp.mandates import MandateIssuer
from device_sdk.platform.ucp.money import exponent, format_minor
from device_sdk.platform.ucp.signing import checkout_sha256, public_jwk, sign_detached, verify_detached
from device_sdk.protocol.errors import CheckoutError, ConsentError, ErrorCode, KeyStoreError
from device_sdk.protocol.fields import Modality, new_id
from simulators.catalog import demo_catalog
from simulators.scenario import DemoResult, run_demo
from simulators.ucp_merchant import UcpMerchant

from .consent_kit import make_proposal, open_shop

SD_JWT_KB = (
    r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(~[A-Za-z0-9_-]+)*~[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"
)
"""An SD-JWT with key binding: `<jwt>~<disclosure>~...~<kb-jwt>`, the KB-JWT a compact JWS."""


class Ap2SdJwtKb(ap2.Ap2):
    """ucp-sdk 0.5.0's `CheckoutMandate` pattern ends in `(~[A-Za-z0-9_-]+)*`, so it refuses every
    SD-JWT+KB (the KB-JWT has dots): this one field is overridden with the SD-JWT+KB form."""

    checkout_mandate: Annotated[str, Field(pattern=SD_JWT_KB)] | None = None


class Ap2Checkout(ap2.Checkout):
    ap2: Ap2SdJwtKb | None = None


def validate_checkout(state: dict[str, Any]) -> None:
    """A checkout state as UCP and its AP2 extension define it; the metadata as a checkout response's
    (the `ucp` union also accepts an order's, which has no payment handlers)."""
    Ap2Checkout.model_validate(state)
    ucp_meta.ResponseCheckoutSchema.model_validate(state["ucp"])
    assert state["links"], "links must not be empty"
    if state["status"] == "completed":
        assert state["order"]["id"] and state["order"]["permalink_url"]


def validate_jwks(keys: list[dict[str, Any]]) -> None:
    for key in keys:
        ucp_profile.JwkPublicKey.model_validate(key)
        assert "d" not in key and key["kid"]


class Run:
    def __init__(self, result: DemoResult, merchant: UcpMerchant, checkout: UcpCheckout, db: Path) -> None:
        self.result, self.merchant, self.checkout, self.db = result, merchant, checkout, db

    def refusals(self) -> list[dict[str, Any]]:
        with sqlite3.connect(self.db) as conn:
            rows = conn.execute("SELECT body FROM audit ORDER BY seq").fetchall()
        return [record for (body,) in rows if (record := json.loads(body))["kind"] == "refusal"]


async def order_through_ucp(tmp_path: Path, faults: frozenset[str] = frozenset()) -> Run:
    issuer = MandateIssuer()
    made: list[UcpCheckout] = []
    async with UcpMerchant(demo_catalog(), platform_jwks=issuer.jwks(), faults=faults) as merchant:

        def make(verifier: Any) -> UcpCheckout:
            made.append(UcpCheckout(verifier, UcpClient(merchant.url), issuer))
            return made[0]

        result = await run_demo(audit=tmp_path / "shop.db", make_checkout=make)
    return Run(result, merchant, made[0], tmp_path / "shop.db")


async def test_an_order_through_a_ucp_merchant_with_ap2_mandates(tmp_path: Path) -> None:
    run = await order_through_ucp(tmp_path)
    assert run.result.ordered, run.result.as_dict()
    order_id = run.result.run.result.order_id if run.result.run.result else None
    assert run.merchant.charges == [order_id]
    (order,) = run.checkout.ucp_orders
    assert order["id"] == order_id and order["permalink_url"].startswith(run.merchant.url)
    # the ecosystem's own models accept everything the merchant sent and the adapter accepted
    ucp_profile.BusinessSchema.model_validate(run.merchant.profile())
    validate_jwks(run.merchant.profile()["keys"])
    for state in run.checkout.states:
        validate_checkout(state)
        assert verify_detached(state, run.merchant.profile()["keys"]) == run.merchant.kid
    ucp_order.Order.model_validate(order)
    assert order["checkout_id"] in {state["id"] for state in run.checkout.states}
    # ... and everything the adapter sent
    kinds = {
        "create": checkout_create_request.CheckoutCreateRequest,
        "update": checkout_update_request.CheckoutUpdateRequest,
    }
    for kind, body in run.merchant.received:
        if kind == "complete":
            checkout_complete_request.CheckoutCompleteRequest.model_validate(body)
            Ap2SdJwtKb.model_validate(body["ap2"])  # CheckoutCompleteRequest has no ap2 field
        else:
            kinds[kind].model_validate(body)
    validate_jwks(run.checkout.issuer.jwks()["keys"])


async def test_the_mandates_verify_with_the_sd_jwt_reference_verifier(tmp_path: Path) -> None:
    run = await order_through_ucp(tmp_path)
    (ucp_id,) = run.checkout.mandates
    confirmed = next(
        s for s in reversed(run.checkout.states) if s["id"] == ucp_id and s["status"] == "ready_for_complete"
    )
    jwk = JWK.from_json(json.dumps(run.checkout.issuer.jwks()["keys"][0]))
    shown = run.result.as_dict()
    for name, token in run.checkout.mandates[ucp_id].items():
        kb = token.rsplit("~", 1)[1]
        header = json.loads(base64.urlsafe_b64decode(kb.split(".")[0] + "=="))
        assert header["typ"] == "kb+jwt"
        verifier = SDJWTVerifier(
            token, lambda iss, hdr: jwk, expected_aud=f"{run.merchant.url}/ucp", expected_nonce=_nonce(token)
        )
        claims = verifier.get_verified_payload()
        assert claims["checkout_id"] == ucp_id
        assert claims["checkout_sha256"] == checkout_sha256(confirmed)
        assert claims["checkout_hash"] == shown["checkout_hash"]
        assert "checkout_hash" not in _issuer_payload(token), "the checkout hash is selectively disclosed"
        assert "cnf" in claims and "d" not in claims["cnf"]["jwk"]
        if name == "checkout_mandate":
            assert claims["display_digest"] == shown["display_digest"]
            assert run.result.verification is not None
            assert claims["confirmation_modality"] == run.result.verification.modality == "text"
            assert claims["checkout"]["ap2"]["merchant_authorization"]
        else:
            assert claims["amount"] == {"value": shown["proposal"]["total_minor"], "currency": "CNY"}
    # a mandate whose KB-JWT is cut off is refused by the same verifier
    token = run.checkout.mandates[ucp_id]["checkout_mandate"]
    with pytest.raises(Exception):  # noqa: B017,PT011 - jwcrypto raises its own error types
        SDJWTVerifier(
            token[:-8], lambda iss, hdr: jwk, expected_aud=f"{run.merchant.url}/ucp", expected_nonce=_nonce(token)
        )


def _issuer_payload(token: str) -> dict[str, Any]:
    payload = token.split("~")[0].split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "==")))


def _nonce(token: str) -> str:
    payload = token.rsplit("~", 1)[1].split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=="))["nonce"])


@pytest.mark.parametrize(
    ("fault", "code", "stage"),
    [
        ("bad_signature", ErrorCode.MERCHANT_UNVERIFIED, "ucp_open"),
        ("totals", ErrorCode.TOTALS_MISMATCH, "ucp_open"),
        ("currency", ErrorCode.UNKNOWN_CURRENCY, "ucp_open"),
        ("expired", ErrorCode.CHECKOUT_EXPIRED, "ucp_open"),
        ("change_after_confirm", ErrorCode.CART_CHANGED, "payment"),
        ("escalate", ErrorCode.STEP_UP_REQUIRED, "ucp_open"),
    ],
)
async def test_a_bad_merchant_gets_no_readback_or_no_order(
    tmp_path: Path, fault: str, code: ErrorCode, stage: str
) -> None:
    run = await order_through_ucp(tmp_path, frozenset({fault}))
    assert not run.result.ordered
    assert run.merchant.charges == [], "nothing charged"
    assert not run.checkout.ucp_orders and not run.merchant.orders
    if stage == "ucp_open":  # no read-back: the device is told why instead
        assert run.result.run.offer is None and run.result.run.presented == []
        assert run.result.run.error is not None and run.result.run.error.code is code
        assert run.checkout.mandates == {}
        if fault == "escalate":  # UCP's requires_escalation is our step_up_required, with where to continue
            assert run.result.outcome.value == "step_up_required"
            assert run.checkout.states[-1]["continue_url"] in run.result.run.error.text
    else:  # read back and confirmed, then the cart changed: the device's order.result says why
        assert run.result.run.offer is not None
        order = run.result.run.result
        assert order is not None and order.order_id is None and order.reason is not None
        assert order.reason.startswith(f"{code.value}: ")
        assert [kind for kind, _ in run.merchant.received].count("complete") == 0
    assert [(r["code"], r["stage"]) for r in run.refusals()] == [(code.value, stage)]


def test_minor_units_follow_each_currencys_exponent() -> None:
    assert [exponent(c) for c in ("JPY", "CNY", "USD", "EUR", "KWD", "BHD")] == [0, 2, 2, 2, 3, 3]
    assert format_minor(1290, "JPY") == "1290 JPY"
    assert format_minor(1290, "CNY") == "12.90 CNY"
    assert format_minor(1290, "KWD") == "1.290 KWD"
    assert format_minor(5, "BHD") == "0.005 BHD"
    assert format_minor(-250, "USD") == "-2.50 USD"
    with pytest.raises(CheckoutError) as caught:
        exponent("XYZ")
    assert caught.value.code is ErrorCode.UNKNOWN_CURRENCY


def test_the_merchant_authorisation_is_detached_and_covers_every_field() -> None:
    for curve in ("P-256", "P-384", "P-521"):
        key = ECKey.generate_key(curve)
        keys = [public_jwk(key, "k1")]
        state = {"id": "chk_1", "currency": "JPY", "totals": [{"type": "total", "amount": 1290}]}
        token = sign_detached(state, key, "k1")
        assert token.split(".")[1] == "" and token.count(".") == 2
        assert verify_detached({**state, "ap2": {"merchant_authorization": token}}, keys) == "k1"
        for changed in ({**state, "currency": "CNY"}, {**state, "totals": [{"type": "total", "amount": 1291}]}):
            with pytest.raises(CheckoutError) as caught:
                verify_detached({**changed, "ap2": {"merchant_authorization": token}}, keys)
            assert caught.value.code is ErrorCode.MERCHANT_UNVERIFIED
    with pytest.raises(CheckoutError):  # a key published with its private part is not a published key
        verify_detached({**state, "ap2": {"merchant_authorization": token}}, [{**keys[0], "d": "x"}])


def test_demo_merchant_ucp_writes_objects_ucp_models_accept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    out = tmp_path / "run" / "ucp"  # made by the command
    done = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "demo", "--merchant", "ucp", "--ucp-out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("UCP order ")]
    order = json.loads((out / "order.json").read_text())
    assert f"{order['id']}: {order['permalink_url']} " in line
    profile = json.loads((out / "ucp-profile.json").read_text())
    ucp_profile.BusinessSchema.model_validate(profile)
    validate_jwks(profile["keys"])
    states = [json.loads(path.read_text()) for path in sorted(out.glob("checkout-*.json"))]
    assert [s["status"] for s in states][-1] == "completed"
    for state in states:
        validate_checkout(state)
        verify_detached(state, profile["keys"])
    ucp_order.Order.model_validate(order)
    assert order["checkout_id"] in {s["id"] for s in states}
    mandates = json.loads((out / "mandates.json").read_text())[order["checkout_id"]]
    for token in mandates.values():
        Ap2SdJwtKb.model_validate({"checkout_mandate": token})
    jwks = json.loads((out / "platform-jwks.json").read_text())
    validate_jwks(jwks["keys"])
    jwk = JWK.from_json(json.dumps(jwks["keys"][0]))
    endpoint = profile["ucp"]["services"]["dev.ucp.shopping"][0]["endpoint"]
    claims = SDJWTVerifier(
        mandates["checkout_mandate"],
        lambda iss, hdr: jwk,
        expected_aud=endpoint,
        expected_nonce=_nonce(mandates["checkout_mandate"]),
    ).get_verified_payload()
    assert claims["checkout_sha256"] == checkout_sha256(states[-2])
    assert not list(out.glob("*request*")), "our request bodies are not written"


def test_check_state_refuses_what_ucps_models_let_through() -> None:
    key = ECKey.generate_key("P-256")
    keys = [public_jwk(key, "m1")]

    def signed(**changes: Any) -> dict[str, Any]:
        state: dict[str, Any] = {
            "id": "chk_1",
            "status": "ready_for_complete",
            "currency": "KWD",
            "line_items": [
                {
                    "id": "li_1",
                    "item": {"id": "sku-1", "title": "Dates", "price": 1250},
                    "quantity": 2,
                    "totals": [{"type": "subtotal", "amount": 2500}, {"type": "total", "amount": 2500}],
                }
            ],
            "totals": [
                {"type": "subtotal", "amount": 2500},
                {"type": "discount", "amount": -500},
                {"type": "total", "amount": 2000},
            ],
            "links": [{"type": "terms_of_service", "url": "https://merchant.test/terms"}],
            "expires_at": "2999-01-01T00:00:00Z",
        } | changes
        return state | {"ap2": {"merchant_authorization": sign_detached(state, key, "m1")}}

    def t(*entries: tuple[str, Any]) -> list[dict[str, Any]]:
        return [{"type": kind, "amount": amount} for kind, amount in entries]

    assert check_state(signed(), keys, time.time()) == "m1"  # a discount is a negative entry of the total
    mismatch = ErrorCode.TOTALS_MISMATCH
    bad = {
        "a float amount": (signed(totals=t(("subtotal", 2500.0), ("total", 2500))), mismatch),
        "a string amount": (signed(totals=t(("subtotal", "2500"), ("total", 2500))), mismatch),
        "two subtotals": (signed(totals=t(("subtotal", 2500), ("subtotal", 0), ("total", 2500))), mismatch),
        "a wrong total": (signed(totals=t(("subtotal", 2500), ("total", 2400))), mismatch),
        "no links": (signed(links=[]), ErrorCode.BAD_PROPOSAL),
        "an escalation without continue_url": (signed(status="requires_escalation"), ErrorCode.BAD_PROPOSAL),
        "expired": (signed(expires_at="2020-01-01T00:00:00Z"), ErrorCode.CHECKOUT_EXPIRED),
        "an unknown currency": (signed(currency="XTS"), ErrorCode.UNKNOWN_CURRENCY),
    }  # fmt: skip
    for what, (state, code) in bad.items():
        with pytest.raises(CheckoutError) as caught:
            check_state(state, keys, time.time())
        assert caught.value.code is code, what


async def test_a_lost_complete_answer_is_asked_again_and_charged_once(tmp_path: Path) -> None:
    run = await order_through_ucp(tmp_path, frozenset({"lose_complete_answer"}))
    assert run.result.ordered, run.result.as_dict()
    assert len(run.merchant.charges) == 1, "one charge for one confirmation"
    assert run.result.run.result is not None and run.result.run.result.order_id == run.merchant.charges[0]
    completes = [body for kind, body in run.merchant.received if kind == "complete"]
    assert len(completes) == 1, "the retry found the checkout completed and read its order"
    assert [order["id"] for order in run.checkout.ucp_orders] == run.merchant.charges
    assert run.refusals() == []


def test_the_platforms_mandate_key_is_kept_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "platform.pem"
    first, again = MandateIssuer.load_or_create(path), MandateIssuer.load_or_create(path)
    assert first.jwks() == again.jwks() and first.kid == ECKey.import_key(path.read_bytes()).thumbprint()
    assert path.stat().st_mode & 0o077 == 0
    validate_jwks(first.jwks()["keys"])
    path.chmod(0o644)
    with pytest.raises(KeyStoreError):
        MandateIssuer.load_or_create(path)


async def test_a_restarted_gateway_settles_a_lost_answer_from_the_store(tmp_path: Path) -> None:
    issuer = MandateIssuer()
    faults = frozenset({"lose_complete_answer"})
    async with UcpMerchant(demo_catalog(), platform_jwks=issuer.jwks(), faults=faults) as merchant:
        with contextlib.contextmanager(open_shop)(tmp_path / "shop.db") as shop:
            first = UcpCheckout(shop.verifier, UcpClient(merchant.url), issuer)
            issued = make_proposal()
            terms = await first.open(issued)
            offer = confirmation_request(issued.proposal, issued.checkout_hash, new_id("req"), terms, time.time() + 60)
            with pytest.raises(ConnectionError):  # charged, and the answer lost: unknown, not a refusal
                await first.complete(shop.confirm(offer))
            assert len(merchant.charges) == 1
            restarted = UcpCheckout(shop.verifier, UcpClient(merchant.url), issuer)  # nothing in its memory
            assert await restarted.settle_pending(0.0) == 1
            p = issued.proposal
            status = await restarted.status(p.device_id, p.session_id, p.checkout_id)
    assert status.state == "ended" and status.result is not None
    assert status.result.order_id == merchant.charges[0] and len(merchant.charges) == 1
    assert [order["id"] for order in restarted.ucp_orders] == merchant.charges


async def test_a_step_up_from_our_policy_is_requires_escalation_until_the_pin(tmp_path: Path) -> None:
    issuer = MandateIssuer()
    async with UcpMerchant(demo_catalog(), platform_jwks=issuer.jwks()) as merchant:
        with contextlib.contextmanager(open_shop)(tmp_path / "shop.db") as shop:
            shop.verifier.step_up.set_pin("speaker-1", "90817263")
            checkout = UcpCheckout(shop.verifier, UcpClient(merchant.url), issuer)
            issued = make_proposal("speaker-1", (("yoga-mat", 2), ("shoes-running-42", 1)))  # over the voice cap
            terms = await checkout.open(issued)
            offer = confirmation_request(issued.proposal, issued.checkout_hash, new_id("req"), terms, time.time() + 60)
            # before the PIN: requires_escalation with where to continue, no mandate, nothing charged
            view = checkout.presented[offer.checkout_id]
            validate_checkout(view)
            assert view["status"] == "requires_escalation" and view["continue_url"]
            assert ap2.Checkout.model_validate(view).continue_url is not None
            assert checkout.escalations == [view] and any(m.get("code") == "step_up_required" for m in view["messages"])
            with pytest.raises(ConsentError) as caught:  # voice alone is refused over the cap
                await checkout.complete(shop.confirm(offer))
            assert caught.value.code == ErrorCode.STEP_UP_REQUIRED
            assert not checkout.mandates and not merchant.charges
            assert checkout.presented[offer.checkout_id]["status"] == "requires_escalation"
            # after the PIN's proof: ready_for_complete, then one order whose mandates carry the step-up
            proof, _ = await checkout.step_up("speaker-1", offer.checkout_id, offer.checkout_hash, "90817263")
            assert checkout.presented[offer.checkout_id]["status"] == "ready_for_complete"
            result = await checkout.complete(shop.confirm(offer, modality=Modality.VOICE_PIN, step_up=proof))
    assert result.outcome.value == "ordered" and merchant.charges == [result.order_id]
    done = checkout.presented[offer.checkout_id]
    validate_checkout(done)
    assert done["status"] == "completed" and done["order"]["id"] == result.order_id
    (mandates,) = checkout.mandates.values()
    for token in mandates.values():
        assert _issuer_payload(token)["step_up"] == {
            "method": "pin",
            "modality": "voice_pin",
            "verified_by": "platform",
        }
