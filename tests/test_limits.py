"""Issue 18, finding 5: one device cannot starve the others. A flooding device gets `rate_limited`
and `quota_exceeded`, holds no more checkouts open than its quota, leaves a bounded trail in the
audit log and bounded audio; another device is served all along. Real broker, real gateway."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.subscription import Subscription
from device_sdk.media.audio import AudioChunk
from device_sdk.platform.gateway.limits import DeviceLimiter, Kind, Limits, TokenBucket
from device_sdk.platform.gateway.quota import OPEN
from device_sdk.protocol.errors import ConfigError, DeviceSdkError, ErrorCode
from device_sdk.protocol.fields import Decision, Outcome
from device_sdk.protocol.messages import (
    AgentRequest,
    AudioStart,
    AudioStop,
    ConfirmationRequest,
    Error,
    Ping,
    Pong,
    Wake,
    WakeResult,
    decode,
)
from device_sdk.protocol.topics import Topics
from simulators.scenario import ShopBackend
from tests.conftest import Restartable, keyed

T = Topics()
FLOODER = "flooder-1"
NEVER = 1e-6
"""A refill rate so slow that nothing comes back while a test runs: the counts are exact."""


async def answers(down: Subscription, until: Callable[[list[Any]], bool], most: int = 10_000) -> list[Any]:
    """The messages on a down topic until `until` accepts what came so far."""
    seen: list[Any] = []
    for _ in range(most):
        try:
            seen.append(decode((await down.get(30)).payload))
        except DeviceSdkError:
            raise AssertionError(f"no end after {[m.type for m in seen]}") from None
        if until(seen):
            return seen
    raise AssertionError(f"no end in {most} messages")


async def served(flooder: MqttBus) -> Subscription:
    """The flooder's down topic, once the gateway serves it (its first ping answered): a device being
    claimed has its messages held, and only so many."""
    down = await flooder.subscribe(T.device_down(FLOODER))
    await flooder.publish(T.device_up(FLOODER), Ping(seq=0).encode())
    await answers(down, lambda seen: isinstance(seen[-1], Pong))
    return down


def codes(messages: list[Any]) -> Counter[str]:
    return Counter(str(m.code) for m in messages if isinstance(m, Error))


def audit_kinds(shop: ShopBackend, device_id: str) -> Counter[str]:
    with contextlib.closing(sqlite3.connect(shop.db.path)) as conn:
        rows = conn.execute(
            "SELECT json_extract(body, '$.kind') FROM audit WHERE json_extract(body, '$.device_id') = ?", (device_id,)
        ).fetchall()
    return Counter(row[0] for row in rows)


def request(n: int, session: str | None = None) -> bytes:
    text = "buy a bottle of milk"
    return AgentRequest(request_id=f"fr{n}", device_id=FLOODER, session_id=session or f"fs{n}", text=text).encode()


async def test_finding_5_a_request_flood_is_refused_and_holds_at_its_quota(broker: Restartable) -> None:
    limits = Limits(open_checkouts=3, requests_per_minute=NEVER, request_burst=8)
    async with ShopBackend(broker.url, limits=limits) as shop, MqttBus(broker.url, "raw-flooder") as flooder:
        down = await served(flooder)
        for n in range(30):
            await flooder.publish(T.device_up(FLOODER), request(n))
        got = await answers(down, lambda seen: len(seen) >= 30)
        async with keyed(shop, broker, "speaker-2", heartbeat=0) as other:
            offer = await other.ask("buy two packs of AA batteries")
            result = await other.answer(offer, Decision.CONFIRM)
        held = [s for (d, _), s in shop.gateway.sessions.items() if d == FLOODER and s.state in OPEN]
        kinds = audit_kinds(shop, FLOODER)
    offers = [m for m in got if isinstance(m, ConfirmationRequest)]
    assert len(offers) == 3  # its quota
    assert codes(got) == {"quota_exceeded": 5, "rate_limited": 22}  # the burst of 8, then every other one
    assert {m.ref for m in got if isinstance(m, Error)} <= {f"fr{n}" for n in range(30)}  # each names its request
    assert len(held) == 3
    assert shop.gateway.quota.open(FLOODER) == 3
    assert sum(kinds.values()) <= 3 * 3  # what three offers write, nothing for the 27 refused
    assert result.outcome is Outcome.ORDERED  # the other device was served
    assert shop.gateway.limiter.refused[Kind.REQUEST] == 22


async def test_finding_5_a_slot_frees_when_its_offer_is_answered(broker: Restartable) -> None:
    shop = ShopBackend(broker.url, limits=Limits(open_checkouts=1))
    async with shop, keyed(shop, broker, "speaker-3", heartbeat=0) as device:
        first = await device.ask("buy a bottle of milk")
        with pytest.raises(DeviceSdkError) as refused:
            await device.ask("buy a yoga mat")
        again = await device.ask("buy two bottles of milk", session_id=first.session_id)  # same session: no slot
        declined = await device.answer(again, Decision.DECLINE)
        later = await device.ask("buy a yoga mat")
    assert refused.value.code == ErrorCode.QUOTA_EXCEEDED
    assert declined.outcome is Outcome.DECLINED
    assert later.request.checkout_id not in (first.request.checkout_id, again.request.checkout_id)


async def test_a_users_answer_to_an_open_offer_is_never_refused_for_rate(broker: Restartable) -> None:
    """Seen with the fleet bench at full speed: a device past its request rate had its decline refused
    `rate_limited`, and the offer stayed open until it expired. The answer to an offer the gateway
    awaits is bounded by the open-checkout quota, so it is taken; a new request is still refused."""
    shop = ShopBackend(broker.url, limits=Limits(requests_per_minute=NEVER, request_burst=2))
    async with shop, keyed(shop, broker, "speaker-4", heartbeat=0) as device:
        first = await device.ask("buy a bottle of milk")
        second = await device.ask("buy a yoga mat")  # the bucket is empty now
        declined = await device.answer(first, Decision.DECLINE)
        confirmed = await device.answer(second, Decision.CONFIRM)
        with pytest.raises(DeviceSdkError) as refused:
            await device.ask("buy two bottles of milk")
    assert declined.outcome is Outcome.DECLINED and confirmed.outcome is Outcome.ORDERED
    assert refused.value.code == ErrorCode.RATE_LIMITED
    assert shop.gateway.limiter.refused[Kind.REQUEST] == 1


async def test_finding_5_pings_and_wakes_beyond_their_rate_are_dropped(broker: Restartable) -> None:
    limits = Limits(
        pings_per_second=NEVER, ping_burst=5, wakes_per_second=NEVER, wake_burst=3, refusal_interval=1e9,
        message_burst=1000,
    )  # fmt: skip
    async with ShopBackend(broker.url, limits=limits) as shop, MqttBus(broker.url, "raw-flooder") as flooder:
        down = await served(flooder)
        up = T.device_up(FLOODER)
        for n in range(60):
            await flooder.publish(up, Ping(seq=n).encode())
            wake = Wake(wake_id=f"fw{n}", session_id=f"fws{n}", confidence=0.9, energy_db=-20.0)
            await flooder.publish(up, wake.encode())
        await flooder.publish(up, request(0))  # answered after everything before it was routed

        def done(seen: list[Any]) -> bool:
            return sum(isinstance(m, WakeResult) for m in seen) >= 3 and any(
                isinstance(m, ConfirmationRequest) for m in seen
            )

        got = await answers(down, done)
        async with keyed(shop, broker, "speaker-2", heartbeat=0) as other:
            offer = await other.ask("buy two packs of AA batteries")
        arbitrations = audit_kinds(shop, FLOODER)["arbitration"]
    pongs = [m for m in got if isinstance(m, Pong)]
    assert len(pongs) == 4  # the burst of five, less the first ping's
    assert codes(got) == {"rate_limited": 2}  # one for pings, one for wakes: not one per message
    assert shop.gateway.limiter.refused[Kind.PING] == 56
    assert shop.gateway.limiter.refused[Kind.WAKE] == 57
    assert 1 <= arbitrations <= 3  # a round (one record) for the three wakes let through, none for the others
    assert offer.request.proposal.lines  # the other device was served


async def test_finding_5_audio_beyond_its_bytes_a_second_is_dropped(broker: Restartable) -> None:
    limits = Limits(audio_bytes_per_second=NEVER, audio_burst_bytes=70_000, refusal_interval=1e9)
    async with ShopBackend(broker.url, limits=limits) as shop, MqttBus(broker.url, "raw-flooder") as flooder:
        down = await served(flooder)
        listening = asyncio.ensure_future(anext(shop.gateway.audio_streams()))
        await asyncio.sleep(0)  # the listener is there before the stream opens
        await flooder.publish(T.device_up(FLOODER), AudioStart(session_id="fa", stream=1).encode())
        for seq in range(10):
            chunk = AudioChunk(1, seq, seq * 16_000, bytes(32_000))
            await flooder.publish(T.device_audio(FLOODER), chunk.encode())
        await flooder.publish(T.device_up(FLOODER), AudioStop(session_id="fa", stream=1, samples=160_000).encode())
        stream = await asyncio.wait_for(listening, 30)
        got = await answers(down, lambda seen: isinstance(seen[-1], Error))
        kept = [chunk.seq async for chunk in stream]
    assert codes(got) == {"rate_limited": 1}
    assert got[-1].ref == "audio"
    assert kept == [0, 1]  # two chunks of 32,016 bytes fit the 70,000 bytes; the other eight did not
    assert shop.gateway.limiter.refused[Kind.AUDIO] == 8


async def test_finding_5_a_device_keeps_bounded_audio_dropping_the_oldest(broker: Restartable) -> None:
    limits = Limits(audio_queue_chunks=10, audio_streams=1)
    async with ShopBackend(broker.url, limits=limits) as shop, MqttBus(broker.url, "raw-flooder") as flooder:
        await served(flooder)
        streams = shop.gateway.audio_streams()
        listening = asyncio.ensure_future(anext(streams))
        await asyncio.sleep(0)
        up, audio = T.device_up(FLOODER), T.device_audio(FLOODER)
        await flooder.publish(up, AudioStart(session_id="fa", stream=1).encode())
        for seq in range(50):
            await flooder.publish(audio, AudioChunk(1, seq, seq * 800, bytes(1600)).encode())
        await flooder.publish(up, AudioStart(session_id="fb", stream=2).encode())  # ends the first: one per device
        first = await asyncio.wait_for(listening, 30)
        second = await asyncio.wait_for(anext(streams), 30)
        kept = [chunk.seq async for chunk in first]
    assert kept == list(range(41, 50))  # the newest; the oldest made room (the end of the stream takes a place)
    assert first.dropped == 41
    assert first.received_samples == 50 * 800
    assert second.stream == 2


def test_finding_5_limits_are_checked_and_buckets_refill() -> None:
    with pytest.raises(ConfigError, match="open_checkouts"):
        Limits(open_checkouts=0)
    with pytest.raises(ConfigError, match="audio_burst_bytes"):
        Limits(audio_burst_bytes=1000)
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5)  # one token back after half a second
    assert not bucket.take(0.5)
    clock = [0.0]
    told: list[tuple[str | None, ErrorCode]] = []
    limiter = DeviceLimiter(
        Limits(ping_burst=1), lambda d, exc, **kw: told.append((d, exc.code)), clock=lambda: clock[0], prune_at=2
    )
    assert limiter.admit("a", Kind.PING)
    assert not limiter.admit("a", Kind.PING)
    assert limiter.admit("b", Kind.PING)  # another device has its own bucket
    assert told == [("a", ErrorCode.RATE_LIMITED)]
    clock[0] = 100.0
    assert limiter.admit("c", Kind.PING)  # the table was full: quiet devices' buckets were forgotten
    assert set(limiter._buckets) == {("c", Kind.PING)}
