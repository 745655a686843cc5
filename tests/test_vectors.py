"""The protocol's published test vectors (docs/vectors) still hold: firmware authors check against them."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.consent.keys import PublicKey, SigningKey
from device_sdk.consent.mandate import MandateClaims, open_mandate, sign_mandate
from device_sdk.consent.readback import compose_readback, display_digest
from device_sdk.media.audio import decode_chunk
from device_sdk.protocol.errors import ConsentError, ErrorCode, ProtocolError
from device_sdk.protocol.fields import MAX_PAYLOAD
from device_sdk.protocol.messages import CheckoutProposal, IssuedProposal, decode

VECTORS = Path(__file__).parent.parent / "docs" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


@pytest.mark.parametrize("entry", MANIFEST["valid"], ids=[e["file"] for e in MANIFEST["valid"]])
def test_valid_vectors_decode_and_encode_byte_exact(entry: dict[str, str]) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    message = decode(data)
    assert message.type == entry["type"]
    assert message.encode() == data  # the SDK's own encoding of the message is exactly these bytes


@pytest.mark.parametrize("entry", MANIFEST["invalid"], ids=[str(e["file"]) for e in MANIFEST["invalid"]])
def test_invalid_vectors_are_refused_with_their_code(entry: dict[str, str]) -> None:
    data = (VECTORS / entry["file"]).read_bytes() if entry["file"] else b" " * (MAX_PAYLOAD + 1)
    with pytest.raises(ProtocolError) as caught:
        decode(data)
    assert caught.value.code == entry["code"]


def test_checkout_hash_read_back_and_display_digest() -> None:
    checkout = MANIFEST["checkout"]
    raw = (VECTORS / checkout["proposal_file"]).read_bytes()
    proposal = decode(raw)
    assert isinstance(proposal, CheckoutProposal)
    assert IssuedProposal(proposal, raw).checkout_hash == checkout["checkout_hash"]
    assert compose_readback(proposal) == checkout["readback"]
    assert display_digest(checkout["readback"]) == checkout["display_digest"]


@pytest.mark.parametrize("entry", MANIFEST["audio_chunks"], ids=[e["file"] for e in MANIFEST["audio_chunks"]])
def test_audio_chunk_vectors(entry: dict[str, Any]) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    assert data.hex() == entry["hex"]
    chunk = decode_chunk(data)
    assert (chunk.stream, chunk.seq, chunk.offset, chunk.last) == (
        entry["stream"], entry["seq"], entry["offset"], entry["last"],
    )  # fmt: skip
    assert list(struct.unpack(f"<{chunk.samples()}h", chunk.pcm)) == entry["samples"]
    assert chunk.encode() == data


def test_mandate_vector_is_byte_exact_and_verifies() -> None:
    vector = MANIFEST["mandate"]
    key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(vector["seed_hex"])))
    assert key.public.raw.hex() == vector["public_key_hex"]
    assert key.public.kid == vector["kid"]
    claims = MandateClaims.model_validate(vector["claims"])
    assert sign_mandate(key, claims) == vector["token"]  # Ed25519 signatures are deterministic
    opened = open_mandate(vector["token"], key.public)
    assert opened.claims == claims
    assert key.public.verify(bytes.fromhex(vector["signature_hex"]), vector["signing_input"].encode())
    checkout = MANIFEST["checkout"]
    assert claims.checkout_hash == checkout["checkout_hash"]
    assert claims.display_digest == checkout["display_digest"]
    result = decode((VECTORS / "confirmation.result.json").read_bytes())
    assert getattr(result, "mandate", None) == vector["token"]


@pytest.mark.parametrize("case", ["amount", "signature"])
def test_tampered_mandate_vectors_are_refused(case: str) -> None:
    vector = MANIFEST["mandate"]
    public = PublicKey(bytes.fromhex(vector["public_key_hex"]))
    with pytest.raises(ConsentError) as caught:
        open_mandate(vector["tampered"][case], public)
    assert caught.value.code == ErrorCode.BAD_SIGNATURE
