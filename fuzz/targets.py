"""The fuzz targets: every decoder that reads bytes from outside, the flow layer, the audio stream.

Each target takes any bytes. It may refuse them with the SDK's own error (`DeviceSdkError`); any other
exception, or a broken invariant (an `AssertionError`: an ack that queues more than the window allows,
a stream that counts more lost audio than a gap may open), is a finding. The same targets run under
Hypothesis in CI (tests/test_fuzz_decoders.py) and under atheris, coverage-guided (fuzz/run.py,
`./dev fuzz [SECONDS]`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

from device_sdk.consent.keys import PublicKey, SigningKey, b64url
from device_sdk.consent.mandate import read_mandate, unverified_claims
from device_sdk.media.audio import MAX_GAP_SECONDS, AudioChunk, AudioStream, decode_chunk
from device_sdk.media.images import strip_metadata
from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import DeviceSdkError
from device_sdk.protocol.messages import AudioFormat, decode
from firmware_bridge import gatt
from firmware_bridge.flow import Ack, AckStatus, Receiver, Sender
from firmware_bridge.frames import MessageType
from firmware_bridge.intents import IntentVerifier, OemKeys

Target = Callable[[bytes], None]

_OEM_KEY = SigningKey.generate()
_INTENTS = IntentVerifier(OemKeys([("oem-demo", _OEM_KEY.public)]), remember=1000)
_INTENT_HEADER = b64url(
    json.dumps({"alg": "Ed25519", "kid": _OEM_KEY.public.kid, "typ": "shop-intent+jws"}, separators=(",", ":")).encode()
)
_MESSAGE = bytes(range(256)) * 8  # 2 KiB: 114 frames at an ATT payload of 20
_FORMAT = AudioFormat()


def _chunks(data: bytes, size_byte: int = 0) -> list[bytes]:
    """`data` cut where its own bytes say: each piece is one length byte, then that many bytes."""
    out, at = [], size_byte
    while at < len(data):
        size = data[at]
        out.append(data[at + 1 : at + 1 + size])
        at += 1 + size
    return out


def json_text(data: bytes) -> None:
    strict_json.loads(data)


def bus_message(data: bytes) -> None:
    decode(data)


def glasses_event(data: bytes) -> None:
    gatt.decode_event(data)


def glasses_control(data: bytes) -> None:
    gatt.decode_control(data)


def ack(data: bytes) -> None:
    decoded = Ack.decode(data)
    assert Ack.decode(decoded.encode()) == decoded


def reassembly(data: bytes) -> None:
    """Frames of any shape into a receiver that acks: a message, an ack or the SDK's error, nothing else."""
    att = 20 + (data[0] % 64 if data else 0)
    receiver = Receiver(att, window=8, max_message=64 * 1024)
    for step, frame in enumerate(_chunks(data, 1)):
        try:
            receiver.feed(frame, step * 0.01)
        except DeviceSdkError:
            continue


def sender(data: bytes) -> None:
    """Any acks into a sender of a 114-frame message: each one queues at most a window again and a
    window of new frames, only frames of the message, each once."""
    flow = Sender(20, window=16)
    flow.send(MessageType.IMAGE, _MESSAGE)
    every = set(flow._frames)
    for piece in _chunks(data):
        try:
            answer = Ack.decode(piece)
        except DeviceSdkError:
            continue
        if piece and piece[0] & 1:  # about this message, whatever the piece says
            answer = Ack(flow.seq, answer.status, answer.window_end, answer.missing)
        try:
            out = flow.on_ack(answer)
        except DeviceSdkError:
            assert answer.status is AckStatus.REFUSED
            return
        assert len(out) <= 2 * flow.window
        assert len(set(out)) == len(out)
        assert every.issuperset(out)


def audio_chunks(data: bytes) -> None:
    """Chunks of any header into one stream: the stream never counts more lost audio than the gaps
    it may open, and an honest chunk after any of them is still taken."""
    stream = AudioStream("fuzz", "ses", 1, _FORMAT, keep=False)
    taken = 0
    for piece in _chunks(data):
        try:
            chunk = decode_chunk(piece)
            stream.feed(chunk)
            taken += 1
        except DeviceSdkError:
            continue
    assert stream.lost_samples <= (taken + 1) * MAX_GAP_SECONDS * stream.format.rate
    if not stream.ended:
        honest = AudioChunk(1, stream._next_seq, stream._next_offset, b"\x00\x00" * 160)
        before = stream.received_samples
        stream.feed(honest)
        assert stream.received_samples == before + 160


def glasses_audio(data: bytes) -> None:
    gatt.split_audio(data)


def mandate(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    read_mandate(text)
    unverified_claims(text)


def intent(data: bytes) -> None:
    _INTENTS.check(data, now=0.0)


def signed_intent(data: bytes) -> None:
    """Any payload, signed by the registered OEM: what the verifier reads after the signature."""
    signing_input = f"{_INTENT_HEADER}.{b64url(data)}"
    _INTENTS.check(f"{signing_input}.{b64url(_OEM_KEY.sign(signing_input.encode()))}", now=0.0)


def public_key(data: bytes) -> None:
    PublicKey.from_text(data.decode("utf-8", "replace"))


def image(data: bytes) -> None:
    strip_metadata(data)


TARGETS: dict[str, Target] = {
    "json_text": json_text,
    "bus_message": bus_message,
    "glasses_event": glasses_event,
    "glasses_control": glasses_control,
    "glasses_audio": glasses_audio,
    "ack": ack,
    "reassembly": reassembly,
    "sender": sender,
    "audio_chunks": audio_chunks,
    "mandate": mandate,
    "intent": intent,
    "signed_intent": signed_intent,
    "public_key": public_key,
    "image": image,
}


def run(name: str, data: bytes) -> None:
    """One input into one target: the SDK's refusal is an answer, anything else raises."""
    with contextlib.suppress(DeviceSdkError):
        TARGETS[name](data)
