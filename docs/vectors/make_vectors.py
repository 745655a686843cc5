"""Writes the protocol test vectors in this folder: `.venv/bin/python docs/vectors/make_vectors.py`.

Run it only when the protocol changes on purpose (and bump the version if old receivers would
misread the new bytes); tests/test_vectors.py checks the SDK against the files it writes.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.consent.keys import SigningKey, b64url
from device_sdk.consent.mandate import MandateClaims, sign_mandate
from device_sdk.consent.readback import compose_readback, display_digest
from device_sdk.media.audio import AudioChunk
from device_sdk.protocol.conformance import ConformanceControl
from device_sdk.protocol.fields import Capability, Decision, DeviceKind, Modality, Outcome
from device_sdk.protocol.messages import (
    AgentRequest,
    AudioFormat,
    AudioStart,
    AudioStop,
    CheckoutProposal,
    ConfirmationRequest,
    ConfirmationResult,
    ConsentTerms,
    ControllerClaim,
    DeviceInfo,
    DeviceStatus,
    Error,
    ErrorCode,
    GatewayStatus,
    IntentResult,
    Merchant,
    OrderResult,
    OrderStatus,
    OrderStatusResult,
    Ping,
    Pong,
    ProposalLine,
    Transcript,
    Wake,
    WakeResult,
)
from firmware_bridge.intents import ACTION_BUY, IntentExtras, OemIntent, sign_intent

OUT = Path(__file__).parent
TEST_SEED = bytes(range(32))
"""The test device key's Ed25519 seed (00 01 ... 1f): for these vectors only, never for a device."""
TEST_OEM_SEED = bytes(range(32, 64))
"""The test OEM key's Ed25519 seed (20 21 ... 3f): for these vectors only."""


def main() -> None:
    homegoods, fresh = Merchant(id="m-homegoods", name="HomeGoods Direct"), Merchant(id="m-fresh", name="FreshMart")
    marketplace = Merchant(id="m-marketplace", name="Shop Agent Marketplace")
    proposal = CheckoutProposal(
        checkout_id="co_0001", request_id="ar_0001", device_id="speaker-1", session_id="ses_0001",
        merchant=marketplace, currency="CNY", total_minor=3830, created_at=1764100000.0,
        lines=[
            ProposalLine(sku="bat-aa-4", name="AA batteries, pack of 4", qty=2, unit="pack", unit_price_minor=1290,
                         line_total_minor=2580, seller=homegoods, category="household"),
            ProposalLine(sku="milk-1l", name="Whole milk, 1 litre", qty=1, unit="bottle", unit_price_minor=1250,
                         line_total_minor=1250, seller=fresh, category="grocery"),
        ],
    )  # fmt: skip
    raw = proposal.encode()
    checkout_hash = hashlib.sha256(raw).hexdigest()
    readback = compose_readback(proposal)
    terms = ConsentTerms(
        audience="shop-checkout:demo", nonce="bm9uY2Utbm9uY2Utbm9uY2Utbm9uY2U", payment_handler="shop-wallet",
        modalities=[Modality.VOICE, Modality.TEXT, Modality.VOICE_PIN, Modality.LENS_TAP, Modality.PHONE_SHEET],
        max_lifetime=300,
    )  # fmt: skip
    device_key = SigningKey(Ed25519PrivateKey.from_private_bytes(TEST_SEED))
    claims = MandateClaims(
        jti="man_0001", aud=terms.audience, nonce=terms.nonce, iat=1764100030, exp=1764100330,
        checkout_id="co_0001", checkout_hash=hashlib.sha256(raw).hexdigest(), payee="m-marketplace",
        amount_minor=3830, currency="CNY", payment_handler="shop-wallet", device_id="speaker-1", session_id="ses_0001",
        modality=Modality.VOICE, display_digest=display_digest(readback),
    )  # fmt: skip
    mandate = sign_mandate(device_key, claims)
    digest = display_digest(readback)
    status = DeviceStatus(device_id="speaker-1", online=True, kind=DeviceKind.SPEAKER,
                          capabilities=[Capability.MIC, Capability.AUDIO_OUT], firmware="1.4.2")  # fmt: skip
    messages = {
        "device.status": status,
        "device.status.will": status.model_copy(update={"online": False}),
        "gateway.status": GatewayStatus(gateway_id="gw-1", online=True),
        "controller.claim": ControllerClaim(device_id="speaker-1", controller_id="gw-1", claimed_at=1764099990.5),
        "device.info": DeviceInfo(
            device_id="speaker-1",
            kind=DeviceKind.SPEAKER,
            capabilities=[Capability.MIC, Capability.AUDIO_OUT],
            firmware="2.4.1",
            room="kitchen",
            public_key=b64url(device_key.public.raw),
        ),
        "wake": Wake(wake_id="wk_0001", session_id="ses_0001", confidence=0.8, energy_db=-21.5),
        "wake.result": WakeResult(wake_id="wk_0001", session_id="ses_0001", granted=False, winner="speaker-2"),
        "intent.result": IntentResult(
            intent_id="int_0001", outcome=Outcome.ORDERED, order_id="ord_0001", total_minor=2580, currency="CNY"
        ),
        "ping": Ping(seq=41),
        "pong": Pong(seq=41, controller_id="gw-1"),
        "conformance.control": ConformanceControl(
            run_id="conf_0001", action="ask", text="buy a bottle of milk", answer=Decision.DECLINE
        ),
        "transcript": Transcript(session_id="ses_0001", text="buy two packs of", final=False, confidence=0.62),
        "audio.start": AudioStart(session_id="ses_0001", stream=1, format=AudioFormat()),
        "audio.stop": AudioStop(session_id="ses_0001", stream=1, samples=32000),
        "agent.request": AgentRequest(
            request_id="req_0001",
            device_id="speaker-1",
            session_id="ses_0001",
            locale="en-US",
            text="buy two packs of AA batteries and a bottle of milk",
            reply_to="shop/v1/agent/reply/gw-1",
        ),
        "checkout.proposal": proposal,
        "confirmation.request": ConfirmationRequest(
            session_id="ses_0001",
            request_id="req_0001",
            checkout_id="co_0001",
            checkout_hash=checkout_hash,
            proposal=proposal,
            readback=readback,
            display_digest=digest,
            consent=terms,
            expires_at=1764100120.0,
        ),
        "confirmation.result": ConfirmationResult(
            session_id="ses_0001",
            checkout_id="co_0001",
            checkout_hash=checkout_hash,
            decision=Decision.CONFIRM,
            modality=Modality.VOICE,
            display_digest=digest,
            heard="yes confirm",
            mandate=mandate,
            idempotency_key="idem_000102030405060708090a0b0c0d0e0f",
        ),
        "order.result": OrderResult(
            session_id="ses_0001",
            checkout_id="co_0001",
            outcome=Outcome.ORDERED,
            order_id="ord_0001",
            total_minor=3830,
            currency="CNY",
        ),
        "order.status": OrderStatus(session_id="ses_0001", checkout_id="co_0001"),
        "order.status.result": OrderStatusResult(
            session_id="ses_0001",
            checkout_id="co_0001",
            state="ended",
            result=OrderResult(
                session_id="ses_0001",
                checkout_id="co_0001",
                outcome=Outcome.ORDERED,
                order_id="ord_0001",
                total_minor=3830,
                currency="CNY",
            ),
        ),
        "error": Error(
            code=ErrorCode.STALE_CHECKOUT,
            text="checkout co_0002 is not the one on offer",
            ref="co_0002",
            session_id="ses_0001",
        ),
    }
    manifest: dict[str, object] = {"valid": [], "invalid": []}
    for name, message in messages.items():
        data = message.encode()
        (OUT / f"{name}.json").write_bytes(data)
        manifest["valid"].append(  # type: ignore[attr-defined]
            {"file": f"{name}.json", "type": message.type, "sha256": hashlib.sha256(data).hexdigest()}
        )
    manifest["checkout"] = {
        "proposal_file": "checkout.proposal.json", "checkout_hash": checkout_hash, "readback": readback,
        "display_digest": digest,
    }  # fmt: skip
    header, payload, signature = mandate.split(".")
    manifest["mandate"] = {
        "seed_hex": TEST_SEED.hex(), "public_key_hex": device_key.public.raw.hex(), "kid": device_key.public.kid,
        "header": json.loads(base64url(header)), "claims": claims.model_dump(mode="json"), "token": mandate,
        "signing_input": f"{header}.{payload}", "signature_hex": base64url(signature).hex(),
        "tampered": {
            "amount": swap_claim(mandate, '"amount_minor":3830', '"amount_minor":383'),
            "signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        },
    }  # fmt: skip
    oem_key = SigningKey(Ed25519PrivateKey.from_private_bytes(TEST_OEM_SEED))
    intent = OemIntent(
        intent_id="int_0001", action=ACTION_BUY, extras=IntentExtras(query="buy two packs of AA batteries"),
        source_package="com.oemdemo.assistant", oem_id="oem-demo", device_id="phone-1", timestamp=1764100000000,
    )  # fmt: skip
    token = sign_intent(oem_key, intent)
    header, payload, signature = token.split(".")
    manifest["intent"] = {
        "seed_hex": TEST_OEM_SEED.hex(), "public_key_hex": oem_key.public.raw.hex(), "kid": oem_key.public.kid,
        "header": json.loads(base64url(header)), "intent": intent.model_dump(mode="json", exclude_none=True),
        "token": token, "signing_input": f"{header}.{payload}", "signature_hex": base64url(signature).hex(),
        "accepted_at": 1764100030.0,
        "refused": {
            "unsigned": [intent.model_dump_json(exclude_none=True), "unsigned"],
            "alg_none": [f"{b64(json.dumps({'alg': 'none', 'typ': 'shop-intent+jws'}).encode())}.{payload}.",
                         "unsigned"],
            "tampered": [swap_claim(token, '"query":"buy two', '"query":"buy ten'), "bad_signature"],
            "signature": [f"{header}.{payload}.{signature[:-4]}AAAA", "bad_signature"],
        },
    }  # fmt: skip
    bidi = raw.replace(b'"name":"FreshMart"', b'"name":"Fresh\\u202eMart"')
    invalid = [
        ("not-json", b"buy milk", "bad_json"),
        ("not-an-object", b"[1,2,3]", "bad_message"),
        ("no-type", b'{"v":1,"seq":1}', "bad_message"),
        ("no-version", b'{"type":"ping","seq":1}', "bad_message"),
        ("unknown-type", b'{"v":1,"type":"launch.rocket"}', "unknown_type"),
        ("missing-field", b'{"v":1,"type":"ping"}', "bad_message"),
        ("future-version", b'{"v":2,"type":"ping","seq":1}', "unsupported_version"),
        ("future-version-unknown-type", b'{"v":2,"type":"hello.v2"}', "unsupported_version"),
        ("version-true", b'{"v":true,"type":"ping","seq":1}', "unsupported_version"),
        ("nan", b'{"v":1,"type":"transcript","session_id":"s","text":"x","final":true,"confidence":NaN}',
         "bad_json"),
        ("device-id-escapes-topic",
         b'{"v":1,"type":"agent.request","request_id":"r","device_id":"speaker-1/#","session_id":"s","text":"x"}',
         "bad_message"),
        ("wrong-line-total", raw.replace(b'"line_total_minor":2580', b'"line_total_minor":2581'), "bad_message"),
        ("wrong-total", raw.replace(b'"total_minor":3830', b'"total_minor":3000'), "bad_message"),
        ("bidi-override-in-name", bidi, "bad_message"),
        ("order-id-without-order",
         b'{"v":1,"type":"order.result","session_id":"s","outcome":"declined","order_id":"ord_1"}', "bad_message"),
        ("ended-status-without-result",
         b'{"v":1,"type":"order.status.result","session_id":"s","checkout_id":"c","state":"ended"}', "bad_message"),
    ]  # fmt: skip
    for old in OUT.glob("invalid-*.bin"):
        old.unlink()
    for name, data, code in invalid:
        (OUT / f"invalid-{name}.bin").write_bytes(data)
        manifest["invalid"].append({"file": f"invalid-{name}.bin", "code": code})  # type: ignore[attr-defined]
    manifest["invalid"].append({"file": None, "size": 65537, "code": "too_large"})  # type: ignore[attr-defined]
    samples = [0, 1000, -1000, 32767, -32768, 5, -5, 0]
    chunk = AudioChunk(stream=1, seq=19, offset=30400, pcm=struct.pack("<8h", *samples), last=True).encode()
    (OUT / "audio-chunk.bin").write_bytes(chunk)
    manifest["audio_chunks"] = [
        {"file": "audio-chunk.bin", "last": True, "stream": 1, "seq": 19, "offset": 30400, "samples": samples,
         "hex": chunk.hex()},
    ]  # fmt: skip
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def base64url(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def swap_claim(token: str, old: str, new: str) -> str:
    """The token with its payload changed and the old signature kept: a forgery to refuse."""
    import base64

    header, payload, signature = token.split(".")
    changed = base64url(payload).decode().replace(old, new)
    assert changed != base64url(payload).decode()
    encoded = base64.urlsafe_b64encode(changed.encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


if __name__ == "__main__":
    main()
