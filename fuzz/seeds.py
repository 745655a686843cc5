"""Write the seed corpus (fuzz/corpus/<target>/): one well-formed input or a few per target, made by the
SDK's own encoders, so the fuzzer starts from what the decoders take. `python -m fuzz.seeds` rewrites it."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import time

from device_sdk.consent.keys import SigningKey, b64url
from device_sdk.consent.mandate import MandateClaims, sign_mandate
from device_sdk.media.audio import AudioChunk
from device_sdk.protocol.fields import Decision, Modality, new_id
from device_sdk.protocol.messages import (
    AgentRequest,
    AudioStart,
    ConfirmationResult,
    DeviceStatus,
    Error,
    Ping,
)
from firmware_bridge import gatt
from firmware_bridge.flow import Ack, AckStatus
from firmware_bridge.frames import MessageType, encode
from firmware_bridge.intents import OemIntent, sign_intent
from simulators.photos import product_photo
from tests.consent_kit import AUDIENCE, make_proposal

from .run import CORPUS


def _length_prefixed(pieces: list[bytes]) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in pieces)


def seeds() -> dict[str, list[bytes]]:
    key = SigningKey.generate()
    issued = make_proposal()
    proposal = issued.proposal
    bus = [
        Ping(seq=1).encode(),
        DeviceStatus(device_id="speaker-1", online=True).encode(),
        AgentRequest(request_id="ar-1", device_id="speaker-1", session_id="ses-1", text="buy milk").encode(),
        AudioStart(session_id="ses-1", stream=1).encode(),
        Error(code="bad_json", text="not JSON").encode(),
        proposal.encode(),
        ConfirmationResult(
            session_id=proposal.session_id, checkout_id=proposal.checkout_id, checkout_hash=issued.checkout_hash,
            decision=Decision.CONFIRM, modality=Modality.VOICE, display_digest="0" * 64, mandate="a.b.c",
        ).encode(),
    ]  # fmt: skip
    limits = gatt.Limits(att_payload=244, window=32, max_message=1 << 20)
    events = [
        gatt.Welcome(version=1, limits=limits, device_id="glasses-1", firmware="sim-1").encode(),
        gatt.Shown(digest="a" * 64).encode(),
        gatt.Input(gesture=gatt.Gesture.TAP, digest="b" * 64).encode(),
        gatt.Battery(level=87).encode(),
        gatt.DeviceFault(code="bad_message", text="no").encode(),
    ]
    controls = [gatt.Hello(versions=[1], limits=limits).encode(), gatt.Capture().encode(),
                gatt.Mic(on=True).encode(), gatt.Clear().encode()]  # fmt: skip
    acks = [Ack(0, AckStatus.RECEIVING, 48, ((3, 2), (9, 1))).encode(), Ack(0, AckStatus.COMPLETE, 0).encode(),
            Ack(0, AckStatus.REFUSED, 0).encode()]  # fmt: skip
    frames = encode(MessageType.EVENT, 5, events[0], 20)
    chunks = [AudioChunk(1, seq, seq * 100, bytes(200), last=seq == 3).encode() for seq in range(4)]
    now = int(time.time())
    claims = MandateClaims(
        jti=new_id("man"), aud=AUDIENCE, nonce=secrets.token_urlsafe(32), iat=now, exp=now + 300,
        checkout_id=proposal.checkout_id, checkout_hash=issued.checkout_hash, payee=proposal.merchant.id,
        amount_minor=proposal.total_minor, currency=proposal.currency, payment_handler="shop-wallet",
        device_id=proposal.device_id, session_id=proposal.session_id, modality=Modality.VOICE,
        display_digest="0" * 64,
    )  # fmt: skip
    token = sign_mandate(key, claims)
    intent = OemIntent(
        intent_id="int-1", action="ai.shop.intent.action.BUY", extras={"query": "buy milk"},
        source_package="com.oem.assistant", oem_id="oem-demo", device_id="phone-1", timestamp=0,
    )  # fmt: skip
    jwk = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": b64url(key.public.raw)})
    return {
        "json_text": [*bus[:3], b'{"a": [1, 2.5, null, true, "\\u00e9"]}'],
        "bus_message": bus,
        "glasses_event": events,
        "glasses_control": controls,
        "glasses_audio": [gatt.audio_message(0, bytes(64))],
        "ack": acks,
        "reassembly": [b"\x00" + _length_prefixed(frames)],
        "sender": [_length_prefixed(acks), b"\x01" + _length_prefixed(acks)],
        "audio_chunks": [_length_prefixed(chunks)],
        "mandate": [token.encode()],
        "intent": [sign_intent(key, intent).encode()],
        "signed_intent": [intent.model_dump_json().encode()],
        "public_key": [jwk.encode(), b64url(key.public.raw).encode()],
        "image": [product_photo("milk-1l", "Milk", size=(32, 24), quality=30)],
    }


def main() -> None:
    for name, inputs in seeds().items():
        folder = CORPUS / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for data in inputs:
            (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
        print(f"{name}: {len(inputs)} seeds")


if __name__ == "__main__":
    main()
