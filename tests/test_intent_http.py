"""The phone's local intent endpoint holds against slow and greedy clients (issue 18, finding 6):
hundreds of loopback sockets that send their headers a byte at a time, or never finish a body, are
closed (by the connection cap or the timeouts) while a real intent beside them is taken and ordered;
an oversized body is refused before it is read. Outcomes are asserted, never timings; every wait
has a hang guard only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp

from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
from device_sdk.protocol.errors import ErrorCode
from device_sdk.protocol.fields import DeviceKind, Outcome
from device_sdk.protocol.messages import IntentResult, decode
from firmware_bridge.intent_http import HttpLimits, IntentEndpoint
from firmware_bridge.intents import MAX_INTENT, IntentVerifier, OemKeys
from firmware_bridge.phone import IntentBridge
from simulators.phone import SimulatedPhone
from simulators.scenario import ShopBackend
from tests.conftest import Restartable

HANG_GUARD = 120.0
"""Only so that a broken endpoint fails the test instead of hanging it; no outcome depends on it."""


@dataclass
class Endpoint:
    phone: SimulatedPhone
    bridge: IntentBridge
    sockets: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def guard(self) -> IntentEndpoint:
        assert self.bridge.endpoint is not None
        return self.bridge.endpoint

    async def order(self, say: str = "buy two packs of AA batteries") -> tuple[int, IntentResult]:
        """A real intent, posted as an OEM's assistant would."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{self.bridge.port}/v1/intents", data=self.phone.intent(say).encode()) as r,
        ):
            result = decode(await r.read())
        assert isinstance(result, IntentResult)
        return r.status, result

    async def connect(self, first: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.bridge.port)
        self.sockets.append(writer)
        writer.write(first)
        await writer.drain()
        return reader, writer


@contextlib.asynccontextmanager
async def endpoint(broker: Restartable, limits: HttpLimits) -> AsyncIterator[Endpoint]:
    async with contextlib.AsyncExitStack() as stack:
        shop = await stack.enter_async_context(ShopBackend(broker.url))
        phone = SimulatedPhone("phone-1", shop.provision("phone-1", DeviceKind.PHONE), SigningKey.generate())
        device = await stack.enter_async_context(DeviceClient(broker.url, "phone-1", kind=DeviceKind.PHONE))
        verifier = IntentVerifier(OemKeys([(phone.oem_id, phone.oem_key.public)]))
        bridge = IntentBridge(device, verifier, phone, bus=False, listen=("127.0.0.1", 0), http_limits=limits)
        rig = Endpoint(phone, await stack.enter_async_context(bridge))
        try:
            yield rig
        finally:
            for writer in rig.sockets:
                writer.close()
            await asyncio.gather(*(writer.wait_closed() for writer in rig.sockets), return_exceptions=True)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(HANG_GUARD):
        while not condition():  # noqa: ASYNC110 - a counter of the endpoint's, with no event to wait on
            await asyncio.sleep(0.01)


async def answer_and_close(reader: asyncio.StreamReader) -> bytes:
    """Everything the endpoint sends until it closes the connection."""
    async with asyncio.timeout(HANG_GUARD):
        try:
            return await reader.read()
        except ConnectionError:  # closed while a byte of ours was on its way
            return b""


async def drip(writers: list[asyncio.StreamWriter], stop: asyncio.Event) -> None:
    """One more header byte to every socket in turn, never the end of the headers."""
    while not stop.is_set():
        for writer in writers:
            if not writer.is_closing():
                with contextlib.suppress(ConnectionError):
                    writer.write(b"x")
        await asyncio.sleep(0.05)


SLOW_START = b"POST /v1/intents HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def test_finding_6_two_hundred_slow_clients_do_not_keep_a_real_intent_out(embedded: Restartable) -> None:
    cap, slow = 32, 200
    async with endpoint(embedded, HttpLimits(header_timeout=3600, max_connections=cap)) as rig:
        sockets = [await rig.connect(SLOW_START) for _ in range(slow)]
        await until(lambda: rig.guard.evicted == slow - cap)  # every one accepted: the cap is full of slow ones
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(drip([writer for _, writer in sockets], stop))
            try:
                status, result = await rig.order()  # takes the place of the oldest slow one
            finally:
                stop.set()
        assert status == 200 and result.outcome is Outcome.ORDERED and result.order_id
        assert rig.guard.evicted == slow - cap + 1 and rig.guard.refused == 0
        await until(lambda: rig.guard.open == cap - 1)  # the real one answered and closed; the newest slow ones hold
        closed = [await answer_and_close(reader) for reader, _ in sockets[: slow - cap + 1]]
        assert closed == [b""] * (slow - cap + 1)  # the oldest slow ones were closed, with no answer
        assert not any(reader.at_eof() for reader, _ in sockets[slow - cap + 1 :])


async def test_finding_6_slow_headers_and_unfinished_bodies_are_closed_after_their_timeouts(
    embedded: Restartable,
) -> None:
    async with endpoint(embedded, HttpLimits(header_timeout=2, body_timeout=2)) as rig:
        dripping = [await rig.connect(SLOW_START) for _ in range(20)]
        silent = [await rig.connect(b"") for _ in range(10)]
        unfinished = [
            await rig.connect(b"POST /v1/intents HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"e" * 10)
            for _ in range(20)
        ]
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(drip([writer for _, writer in dripping], stop))
            try:
                status, result = await rig.order()  # taken beside them
                answers = [await answer_and_close(reader) for reader, _ in dripping + silent + unfinished]
            finally:
                stop.set()
        assert status == 200 and result.outcome is Outcome.ORDERED
        # a dripping client may lose the 408 to the reset its next byte draws; closed all the same
        assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408 ") for answer in answers[:20])
        for answer in [answer for answer in answers[:20] if answer] + answers[20:]:
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:40]
            refusal = decode(answer.partition(b"\r\n\r\n")[2])
            assert isinstance(refusal, IntentResult) and refusal.code is ErrorCode.TIMEOUT
        assert rig.guard.timed_out == 50
        await until(lambda: rig.guard.open == 0)


async def test_finding_6_an_oversize_body_is_refused_before_it_is_read(embedded: Restartable) -> None:
    async with endpoint(embedded, HttpLimits(body_timeout=3600)) as rig:
        reader, writer = await rig.connect(
            b"POST /v1/intents HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 100
        )
        answer = await answer_and_close(reader)  # no need to send the 100 MB: refused by its length
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413 ")
        refusal = decode(answer.partition(b"\r\n\r\n")[2])
        assert isinstance(refusal, IntentResult) and refusal.code is ErrorCode.TOO_LARGE

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused when the bytes pass the cap
            for _ in range(MAX_INTENT // 65536 + 2):
                yield b"x" * 65536

        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{rig.bridge.port}/v1/intents", data=chunks()) as response,
        ):
            refused = decode(await response.read())
        assert response.status == 413 and isinstance(refused, IntentResult) and refused.code is ErrorCode.TOO_LARGE
        status, result = await rig.order()
        assert status == 200 and result.outcome is Outcome.ORDERED

    async with endpoint(embedded, HttpLimits(max_body=200)) as rig:  # a cap set lower than an intent
        status, result = await rig.order()
        assert status == 413 and result.code is ErrorCode.TOO_LARGE and result.outcome is None


async def test_finding_6_when_every_place_holds_a_request_a_new_connection_is_told_busy(
    embedded: Restartable,
) -> None:
    async with endpoint(embedded, HttpLimits(body_timeout=3600, max_connections=4)) as rig:
        holding = [
            await rig.connect(b"POST /v1/intents HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n") for _ in range(4)
        ]
        await until(lambda: rig.guard.reading == 4)
        reader, writer = await rig.connect(b"")
        answer = await answer_and_close(reader)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ")
        busy = decode(answer.partition(b"\r\n\r\n")[2])
        assert isinstance(busy, IntentResult) and busy.code is ErrorCode.BUSY
        assert rig.guard.refused == 1 and rig.guard.evicted == 0 and rig.guard.open == 4
        for _, holder in holding:  # the requests end: their places are free again
            holder.close()
        await until(lambda: rig.guard.open == 0)
        status, result = await rig.order()
        assert status == 200 and result.outcome is Outcome.ORDERED
