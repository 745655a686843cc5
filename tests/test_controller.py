"""One active controller per device, and the heartbeat that notices when it is gone."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient, HealthEvent
from device_sdk.protocol.fields import Decision, Outcome
from device_sdk.protocol.messages import Error
from simulators.scenario import ShopBackend
from tests.conftest import Restartable


async def health(device: DeviceClient, alive: bool, timeout: float = 5.0) -> HealthEvent:
    async with asyncio.timeout(timeout):
        async for event in device.events():
            if isinstance(event, HealthEvent) and event.alive is alive:
                return event
    raise AssertionError("unreachable")


async def test_heartbeat_notices_a_silent_controller(broker: Restartable) -> None:
    async with DeviceClient(broker.url, "speaker-1", heartbeat=0.1, pong_timeout=0.4) as device:
        async with ShopBackend(broker.url, shared=False) as shop:
            up = await health(device, alive=True)
            assert up.controller_id == shop.gateway.gateway_id
            assert device.controller_id == shop.gateway.gateway_id
        down = await health(device, alive=False)
        assert down.controller_id == shop.gateway.gateway_id
        assert not device.controller_alive


async def test_two_gateways_serve_a_device_one_at_a_time(mosquitto: MosquittoServer) -> None:
    url, key = mosquitto.url, SigningKey.generate()
    async with DeviceClient(url, "speaker-1", heartbeat=0.1, pong_timeout=0.5, resend_after=0.5, key=key) as device:
        first = ShopBackend(url, gateway_id="gw-first")
        await first.__aenter__()
        try:
            first.enroll("speaker-1", key)
            await health(device, alive=True)
            async with ShopBackend(url, gateway_id="gw-second") as second:
                second.enroll("speaker-1", key)
                offer = await device.ask("buy two bottles of shampoo")
                served = [g for g in (first.gateway, second.gateway) if ("speaker-1", offer.session_id) in g.sessions]
                assert [g.gateway_id for g in served] == ["gw-first"]
                assert second.gateway.claims["speaker-1"] == "gw-first"
                await first.__aexit__(None, None, None)
                # the first gateway is gone (offline status); the second takes the device over
                offer = await device.ask("buy two bottles of shampoo")
                assert ("speaker-1", offer.session_id) in second.gateway.sessions
                result = await device.answer(offer, Decision.CONFIRM)
                assert result.outcome is Outcome.ORDERED
                assert device.controller_id == "gw-second"
                assert len(second.checkout.orders) == 1 and first.checkout.orders == []
        finally:
            await first.__aexit__(None, None, None)


async def test_the_devices_of_a_gateway_that_goes_offline_are_taken_over_before_they_speak(
    mosquitto: MosquittoServer,
) -> None:
    """Quiet devices (no pings) of a gateway that goes offline are claimed by the live gateways at
    once, split between them by a rendezvous hash, not when each next speaks."""
    url = mosquitto.url
    first = ShopBackend(url, gateway_id="gw-first")
    await first.__aenter__()
    try:
        async with contextlib.AsyncExitStack() as devices:
            clients = [
                await devices.enter_async_context(DeviceClient(url, f"speaker-{n}", heartbeat=0)) for n in range(12)
            ]
            for _ in range(200):  # each announced itself online, and the only gateway claimed it
                if all(c.controller_id == "gw-first" for c in clients):
                    break
                await asyncio.sleep(0.05)
            assert all(c.controller_id == "gw-first" for c in clients)
            async with (
                ShopBackend(url, gateway_id="gw-second") as second,
                ShopBackend(url, gateway_id="gw-third") as third,
            ):
                await first.__aexit__(None, None, None)  # its goodbye: retained status offline
                for _ in range(200):  # the devices say nothing meanwhile
                    if all(c.controller_id in ("gw-second", "gw-third") for c in clients):
                        break
                    await asyncio.sleep(0.05)
                heirs = {c.device_id: c.controller_id for c in clients}
                assert set(heirs.values()) == {"gw-second", "gw-third"}  # shared, all taken over
                for live in (second, third):  # both agree on each device's heir, so none is claimed twice
                    assert all(live.gateway.claim_book.heir(d) == heirs[d] for d in heirs)
                    assert all(live.gateway.claims[d] == heirs[d] for d in heirs)
    finally:
        await first.__aexit__(None, None, None)


async def test_two_gateways_that_both_serve_a_device_tell_it_one_order(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    """On a NATS cluster two gateways' claims can reach different nodes in different orders, and both
    gateways serve the device: each offers, the device takes one offer and confirms it. The gateway
    whose offer it was not refused `stale_checkout`, and the device could hear that refusal for the
    order the other placed (19 of 976 confirmations in a fleet run on NATS). It now leaves the answer
    to the store, which gives the same order under the device's idempotency key."""
    url, key, database = mosquitto.url, SigningKey.generate(), tmp_path / "shop.db"
    async with (
        ShopBackend(url, gateway_id="gw-one", database=database) as one,
        ShopBackend(url, gateway_id="gw-two", database=database) as two,
    ):
        one.enroll("speaker-1", key)
        async with DeviceClient(url, "speaker-1", key=key, heartbeat=0) as device:
            errors: list[Error] = []
            for _ in range(200):  # claimed by one of them
                if device.controller_id is not None:
                    break
                await asyncio.sleep(0.05)
            for shop in (one, two):  # both believe they serve it, as their nodes told them
                shop.gateway.claim_book.claims["speaker-1"] = shop.gateway.gateway_id

            async def listen() -> None:
                async for event in device.events():
                    if isinstance(event, Error):
                        errors.append(event)

            listening = asyncio.create_task(listen())
            offer = await device.ask("buy a bottle of milk")
            result = await device.answer(offer, Decision.CONFIRM)
            await asyncio.sleep(1.0)  # both gateways' answers are in
            listening.cancel()
    offers = [s for s in (one, two) if any(k[0] == "speaker-1" for k in s.gateway.sessions)]
    assert len(offers) == 2  # both did serve it
    assert result.outcome is Outcome.ORDERED
    orders = {o.order_id for o in one.checkout.orders} | {o.order_id for o in two.checkout.orders}
    assert orders == {result.order_id}  # one order, whichever gateway placed or found it
    assert [e.code for e in errors] == []  # no refusal heard for it
