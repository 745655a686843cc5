"""Issue 18, finding 11 (and the duplicate keys of finding 9): decoders that cannot crash, amplify or
be poisoned. Every malformed input gets the SDK's own error; an ack cannot make the sender queue more
than its window; an audio chunk cannot poison its stream; refused completions do not grow the store."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_sdk.consent.keys import SigningKey, b64url
from device_sdk.consent.mandate import ALG, JWS_TYPE, read_mandate, unverified_claims
from device_sdk.media.audio import AudioChunk, AudioStream, decode_chunk
from device_sdk.platform.checkout import consent_store
from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import ConsentError, ErrorCode, FrameError, IntentError, ProtocolError
from device_sdk.protocol.messages import AudioFormat, decode
from device_sdk.protocol.topics import check_id
from firmware_bridge import gatt
from firmware_bridge.flow import Ack, AckStatus, Receiver, Sender
from firmware_bridge.frames import MessageType
from firmware_bridge.intents import IntentVerifier, OemIntent, OemKeys, sign_intent
from firmware_bridge.link import GlassesLink, find_glasses
from simulators.ble_radio import BumbleClient, BumbleScanner, VirtualRadio
from simulators.glasses import SimulatedGlasses
from tests.consent_kit import Shop, open_shop

NESTED = b"[" * 4000  # inside the 4,096-byte limit of a control or event message


def jws(key: SigningKey, header: bytes, payload: bytes) -> str:
    """A compact JWS over exactly these header and payload bytes, validly signed."""
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode()
    return f"{signing_input.decode()}.{b64url(key.sign(signing_input))}"


# one reading of every JSON document ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        b'{"type": "ping", "type": "pong"}',
        b'{"a": {"b": 1, "b": 2}}',
        b"[" * 33 + b"]" * 33,
        NESTED,
        b"[NaN]",
        b'{"x": Infinity}',
        b'["\\ud800"]',
        '["\ud800"]',
        b"\xed\xa0\x80",  # a surrogate encoded as UTF-8
        b"\xff\xfe[\x001\x00]\x00",  # UTF-16: never guessed
        b"\xef\xbb\xbf{}",
        b'{"a": 1',
    ],
)
def test_finding_11_strict_json_refuses_what_two_readers_could_read_differently(text: bytes | str) -> None:
    with pytest.raises(ProtocolError) as caught:
        strict_json.loads(text)
    assert caught.value.code == ErrorCode.BAD_JSON
    assert strict_json.loads(b'{"a": [1, {"b": "]]]\\"[[["}], "c": "\\ud83d\\ude00"}') == {
        "a": [1, {"b": ']]]"[[['}],
        "c": "\U0001f600",
    }


def test_finding_9_duplicate_keys_are_refused_on_the_bus() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(b'{"v": 1, "type": "ping", "type": "pong", "seq": 1}')
    assert caught.value.code == ErrorCode.BAD_JSON and "'type' appears twice" in caught.value.text
    with pytest.raises(ProtocolError) as caught:
        decode(b'{"v": 1, "type": "ping", "seq": 1, "seq": 2}')
    assert caught.value.code == ErrorCode.BAD_JSON
    assert decode(b'{"v": 1, "type": "ping", "seq": 1}').type == "ping"


def test_finding_9_duplicate_keys_in_a_glasses_message_are_refused() -> None:
    with pytest.raises(FrameError) as caught:
        gatt.decode_event(b'{"ev": "battery", "level": 5, "level": 90}')
    assert caught.value.code == ErrorCode.BAD_MESSAGE
    with pytest.raises(FrameError):
        gatt.decode_control(b'{"op": "mic", "on": true, "on": false}')


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    yield from open_shop(tmp_path / "shop.db")


def test_finding_9_duplicate_keys_a_jws_header_with_two_alg_is_refused(shop: Shop) -> None:
    offer = shop.offer()
    key = shop.keys["speaker-1"]
    claims = shop.claims(offer).model_dump_json().encode()
    header = f'{{"alg":"none","alg":"{ALG}","kid":"{key.public.kid}","typ":"{JWS_TYPE}"}}'.encode()
    token = jws(key, header, claims)  # signed as it is: joserfc alone reads the last alg
    with pytest.raises(ConsentError) as caught:
        read_mandate(token)
    assert caught.value.code == ErrorCode.MANDATE_MALFORMED and "'alg' appears twice" in caught.value.text
    with pytest.raises(ConsentError) as caught:
        shop.complete(shop.completion(offer, token))
    assert caught.value.code == ErrorCode.MANDATE_MALFORMED
    assert shop.charges == [] and shop.verifier.orders() == []


def test_finding_9_duplicate_keys_mandate_claims_twice_are_refused(shop: Shop) -> None:
    offer = shop.offer()
    key = shop.keys["speaker-1"]
    claims = shop.claims(offer).model_dump_json()
    doubled = claims[:-1] + ',"amount_minor":1}'  # a claim twice: one reader sees the price, another 1
    header = json.dumps({"alg": ALG, "kid": key.public.kid, "typ": JWS_TYPE}, separators=(",", ":")).encode()
    token = jws(key, header, doubled.encode())
    with pytest.raises(ConsentError) as caught:
        shop.complete(shop.completion(offer, token))
    assert caught.value.code == ErrorCode.MANDATE_MALFORMED and "appears twice" in caught.value.text
    assert shop.verifier.orders() == [] and unverified_claims(token) is None


def _intent(**changes: Any) -> OemIntent:
    fields: dict[str, Any] = {
        "intent_id": "int-1", "action": "ai.shop.intent.action.BUY", "extras": {"query": "milk"},
        "source_package": "com.oem.assistant", "oem_id": "oem-demo", "device_id": "phone-1",
        "timestamp": int(time.time() * 1000),
    }  # fmt: skip
    fields.update(changes)
    return OemIntent.model_validate(fields)


def test_finding_9_duplicate_keys_in_an_intent_are_refused() -> None:
    key = SigningKey.generate()
    verifier = IntentVerifier(OemKeys([("oem-demo", key.public)]))
    body = _intent().model_dump_json(exclude_none=True)
    header = f'{{"alg":"{ALG}","alg":"{ALG}","kid":"{key.public.kid}","typ":"shop-intent+jws"}}'.encode()
    with pytest.raises(IntentError) as caught:
        verifier.check(jws(key, header, body.encode()))
    assert caught.value.code == ErrorCode.BAD_MESSAGE and "'alg' appears twice" in caught.value.text
    good_header = json.dumps({"alg": ALG, "kid": key.public.kid, "typ": "shop-intent+jws"}).encode()
    doubled = body[:-1] + ',"device_id":"phone-2"}'
    with pytest.raises(IntentError) as caught:
        verifier.check(jws(key, good_header, doubled.encode()))
    assert caught.value.code == ErrorCode.BAD_MESSAGE and "appears twice" in caught.value.text
    assert verifier.check(sign_intent(key, _intent())).intent_id == "int-1"  # the honest one still goes


# the glasses link: no exception into bleak's callback -------------------------------------------


def test_finding_11_deep_nesting_is_a_frame_error_not_a_recursion_error() -> None:
    for decoder in (gatt.decode_event, gatt.decode_control):
        for payload in (NESTED, b"{" * 4000, b'{"a":' * 600 + b"1" + b"}" * 600):
            with pytest.raises(FrameError) as caught:
                decoder(payload)
            assert caught.value.code == ErrorCode.BAD_MESSAGE
        with pytest.raises(FrameError):
            decoder(b"\xff\xfe")
        with pytest.raises(FrameError):
            decoder(None)  # type: ignore[arg-type]


async def test_finding_11_a_nested_event_is_dropped_by_the_link_and_the_link_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    radio = VirtualRadio()
    async with SimulatedGlasses(radio) as glasses:
        central = await radio.central()
        found = await find_glasses_named(glasses.name, central)
        async with link_to(found) as link:
            with caplog.at_level(logging.WARNING, logger="firmware_bridge.link"):
                glasses._notify_message(gatt.EVENTS_UUID, MessageType.EVENT, NESTED)
                glasses._notify_message(gatt.EVENTS_UUID, MessageType.EVENT, b'{"ev":"battery","level":1,"level":2}')
                await glasses.set_battery(42)
                async with asyncio.timeout(10):
                    async for event in link.events():
                        if isinstance(event, gatt.Battery):
                            break
            assert event.level == 42
            dropped = [r.getMessage() for r in caplog.records if "dropped a frame" in r.getMessage()]
            assert len(dropped) == 2 and all("[bad_message]" in text for text in dropped), dropped
            assert not [r for r in caplog.records if r.exc_info]  # nothing unexpected on the way


async def test_finding_11_a_nested_control_gets_an_error_event_from_the_simulated_glasses() -> None:
    radio = VirtualRadio()
    async with SimulatedGlasses(radio) as glasses:
        central = await radio.central()
        async with link_to(await find_glasses_named(glasses.name, central)) as link:
            assert link.limits is not None
            link._queue(gatt.CONTROL_UUID, link._control(NESTED, link.limits.att_payload), True)
            async with asyncio.timeout(10):
                async for event in link.events():
                    if isinstance(event, gatt.DeviceFault):
                        break
            assert event.code == ErrorCode.BAD_MESSAGE and "nested deeper" in event.text
            assert await link.read_battery() == 87  # the link goes on


async def find_glasses_named(name: str, central: Any) -> Any:
    found = await find_glasses(name=name, backend=BumbleScanner, central=central)
    assert len(found) == 1
    return found[0].device


def link_to(device: Any) -> GlassesLink:
    return GlassesLink(device, backend=BumbleClient, health_every=60)  # type: ignore[arg-type]


# the flow layer: an ack is a request, bounded by the window -------------------------------------


def _long_message(window: int = 32) -> tuple[Sender, list[bytes]]:
    sender = Sender(20, window=window)
    first = sender.send(MessageType.IMAGE, bytes(range(256)) * 144)  # 2,049 frames of an ATT payload of 20
    return sender, first


def test_finding_11_one_wide_ack_queues_at_most_a_window_again() -> None:
    sender, first = _long_message()
    assert len(first) == 32 and len(sender._frames) == 2049
    wide = Ack(sender.seq, AckStatus.RECEIVING, 0xFFFF, tuple((0, 0xFFFF) for _ in range(32)))
    assert len(wide.encode()) == 134
    queued = [len(sender.on_ack(wide)) for _ in range(100)]
    assert max(queued) <= 2 * sender.window  # once 65,568 frames (33.7 MB) for the second ack alone
    assert sum(queued) <= 100 * 2 * sender.window
    again = sender.on_ack(wide)
    assert len(again) == len(set(again)) <= sender.window  # each chunk once per ack


def test_finding_11_an_ack_cannot_ask_again_for_what_was_not_sent_or_already_arrived() -> None:
    sender, first = _long_message()
    assert sender.on_ack(Ack(sender.seq, AckStatus.RECEIVING, 32, ((40, 100),))) == []  # never sent
    assert sender.on_ack(Ack(sender.seq, AckStatus.RECEIVING, 32, ((10, 2),))) == first[10:12]
    assert sender.on_ack(Ack(sender.seq, AckStatus.RECEIVING, 32, ((3, 4), (11, 1)))) == [first[11]]  # 3-6 arrived
    assert sender.on_ack(Ack(sender.seq, AckStatus.RECEIVING, 32, ((11, 1), (11, 1), (11, 3)))) == first[11:14]


def test_finding_11_an_honest_lossy_transfer_still_completes() -> None:
    sender, frames = _long_message(window=16)
    receiver = Receiver(20, window=16)
    now, lost, got = 0.0, 0, None
    pending = list(frames)
    for _ in range(20_000):
        if not pending:
            pending = sender.stalled()
        frame = pending.pop(0)
        lost += 1
        if lost % 7 == 0:  # every seventh frame is lost
            continue
        now += 0.001
        message, ack = receiver.feed(frame, now)
        if message is not None:
            got = message
            break
        if ack is not None:
            pending += sender.on_ack(ack)
    assert got is not None and got.payload == bytes(range(256)) * 144


# audio: a chunk cannot poison the stream --------------------------------------------------------


@pytest.mark.parametrize("far", [{"seq": 2**32 - 1}, {"offset": 2**64 - 1}, {"seq": 7000}, {"offset": 16000 * 61}])
def test_finding_11_an_audio_chunk_far_ahead_is_refused_and_the_stream_goes_on(far: dict[str, int]) -> None:
    stream = AudioStream("speaker-1", "ses-1", 1, AudioFormat())
    stream.feed(AudioChunk(1, 0, 0, b"\x01\x00" * 320))
    bad = {"seq": 1, "offset": 320, **far}
    with pytest.raises(ProtocolError) as caught:
        stream.feed(decode_chunk(AudioChunk(1, bad["seq"], bad["offset"], b"\x02\x00" * 320).encode()))
    assert caught.value.code == ErrorCode.BAD_AUDIO
    for seq in range(1, 4):  # the honest chunks after it are all taken
        stream.feed(AudioChunk(1, seq, 320 * seq, b"\x03\x00" * 320))
    assert stream.received_samples == 4 * 320 and stream.lost_samples == 0
    stream.feed(AudioChunk(1, 10, 320 * 10, b"\x03\x00" * 320))  # an honest gap (QoS 0) still counts
    assert stream.lost_samples == 6 * 320
    stream.end(sent_samples=2**63)
    assert stream.lost_samples <= 6 * 320 + 60 * 16000  # a stop cannot claim more than a gap may open


@pytest.mark.parametrize(
    ("data", "width"),
    [(b"\x01" + bytes(15) + b"\x00\x00", 0), (bytes(18), -1), (bytes(18), "2"), (None, 2), ("chunk", 2), (7, 2)],
)
def test_finding_11_decode_chunk_refuses_wrong_arguments_with_its_error(data: Any, width: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_chunk(data, width)
    assert caught.value.code == ErrorCode.BAD_AUDIO


# public entry points refuse wrong arguments with the SDK's errors -------------------------------


@pytest.mark.parametrize("token", ["abc\ud800.def.ghi", None, 42, ["a.b.c"], b"\xff.\xfe.\xfd"])
def test_finding_11_intent_check_refuses_wrong_tokens_with_an_intent_error(token: Any) -> None:
    verifier = IntentVerifier(OemKeys([("oem-demo", SigningKey.generate().public)]))
    with pytest.raises(IntentError) as caught:
        verifier.check(token)
    assert caught.value.code == ErrorCode.BAD_MESSAGE


def test_finding_11_intent_check_refuses_a_wrong_clock() -> None:
    key = SigningKey.generate()
    verifier = IntentVerifier(OemKeys([("oem-demo", key.public)]))
    for now in ("now", float("nan"), True):
        with pytest.raises(IntentError):
            verifier.check(sign_intent(key, _intent()), now=now)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [b"speaker-1", None, 7, "a/b", "\ud800"])
def test_finding_11_check_id_refuses_what_is_not_an_id(value: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        check_id(value)
    assert caught.value.code == ErrorCode.BAD_MESSAGE


# the verifier's store: refusals are bounded and pruned ------------------------------------------


def test_finding_11_refused_completions_do_not_grow_the_store(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consent_store, "KEEP_REFUSALS_PER_DEVICE", 40)
    offer = shop.offer()
    ordered = shop.complete(shop.confirm(offer))  # an order: its row is never pruned
    other = shop.offer()
    keys = []
    for _ in range(150):
        completion = shop.completion(other, "not.a.mandate")
        keys.append(completion.idempotency_key)
        with pytest.raises(ConsentError):
            shop.complete(completion)

    def rows() -> tuple[int, int]:
        with shop.db.reading() as conn:
            got = conn.execute("SELECT count(*), count(order_id) FROM completions").fetchone()
        return int(got[0]), int(got[1])

    assert rows() == (41, 1)  # once 151
    with shop.db.reading() as conn:
        kept = {k for (k,) in conn.execute("SELECT idempotency_key FROM completions WHERE order_id IS NULL")}
    assert kept == set(keys[-40:])  # the newest answer their keys
    shop.verifier.clock = lambda: time.time() + consent_store.KEEP_REFUSALS + 1  # a day on, no checkout opened
    with pytest.raises(ConsentError):
        shop.complete(shop.completion(other, "not.a.mandate"))
    assert rows() == (2, 1)  # the old refusals are gone at the next refusal; the order stays
    assert [order[0] for order in shop.verifier.orders()] == [ordered.order_id]
