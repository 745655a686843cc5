"""One active controller per device, and the heartbeat that notices when it is gone."""

from __future__ import annotations

import asyncio
import contextlib

from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient, HealthEvent
from device_sdk.protocol.fields import Decision, Outcome
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
