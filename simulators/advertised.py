"""Simulated devices that advertise themselves with zeroconf, to see discovery work with no hardware.

`device-sdk simulate devices --count 3` runs them: each is a complete protocol device on the bus (a
`DeviceClient` with a signing key of its own, its retained `device.info` with the public key, and the
conformance test mode with a simulated user: `conformance_devices.TestModeDevice`) and a
`DeviceAdvertiser` on the LAN (the same description as a TXT record).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from device_sdk.bus.url import BrokerUrl
from device_sdk.discovery.advertise import DeviceAdvertiser, open_zeroconf
from device_sdk.discovery.records import Interfaces
from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.fields import DeviceKind

from .conformance_devices import TestModeDevice
from .scenario import broker_or_embedded

KINDS = (DeviceKind.SPEAKER, DeviceKind.GLASSES, DeviceKind.PHONE)
"""The simulated devices take these kinds in turn: a speaker, a pair of glasses, a phone, a speaker..."""
FIRMWARE = "sim-0.1"


class AdvertisedDevices:
    """`count` simulated devices, `<prefix>-<kind>-<n>`, connected to `url` and advertised, while the
    context is open. One mDNS responder (AsyncZeroconf) serves them all, as one host would.

        async with AdvertisedDevices(url, 2, interfaces=["127.0.0.1"]) as sim:
            sim.devices[0].info  # == what its TXT record says
    """

    def __init__(
        self,
        url: BrokerUrl,
        count: int = 2,
        *,
        interfaces: Interfaces = None,
        prefix: str = "sim",
        room: str | None = None,
        heartbeat: float = 2.0,
        test_mode: bool = True,
    ) -> None:
        if count < 1:
            raise ConfigError(f"simulate at least one device, not {count}")
        self.url = url
        self.interfaces = interfaces
        self.sims = [
            TestModeDevice(
                url,
                f"{prefix}-{kind.value}-{n}",
                kind,
                test_mode=test_mode,
                room=room,
                firmware=FIRMWARE,
                heartbeat=heartbeat,
            )
            for n, kind in enumerate((KINDS[i % len(KINDS)] for i in range(count)), start=1)
        ]
        self.devices = [sim.device for sim in self.sims]
        """Each device's `DeviceClient`."""
        self.advertisers: list[DeviceAdvertiser] = []
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        stack = await self._stack.__aenter__()
        try:
            for sim in self.sims:
                await stack.enter_async_context(sim)
            zc = open_zeroconf(self.interfaces)
            stack.push_async_callback(zc.async_close)
            self.advertisers = [DeviceAdvertiser(d.info, interfaces=self.interfaces, zc=zc) for d in self.devices]
            # Each advertisement probes the network for about 1.5 s: all at once, not one after another.
            entered = await asyncio.gather(*(a.__aenter__() for a in self.advertisers), return_exceptions=True)
            for advertiser, outcome in zip(self.advertisers, entered, strict=True):
                if not isinstance(outcome, BaseException):
                    stack.push_async_exit(advertiser)
            for outcome in entered:
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.__aexit__(exc_type, exc, tb)


def _say(line: str) -> None:
    print(line, flush=True)  # at once, also into a pipe: a script waits for these lines


async def run_advertised_devices(
    count: int,
    *,
    broker: BrokerUrl | str | None = None,
    interfaces: Sequence[str] | None = None,
    seconds: float | None = None,
    prefix: str = "sim",
    test_mode: bool = True,
    echo: Callable[[str], None] = _say,
) -> int:
    """`device-sdk simulate devices`: run `count` advertised devices until Ctrl-C or `seconds`;
    with no broker URL, on an embedded broker of their own."""
    async with contextlib.AsyncExitStack() as stack:
        url, _ = await broker_or_embedded(stack, broker)
        sim = await stack.enter_async_context(
            AdvertisedDevices(url, count, interfaces=interfaces, prefix=prefix, test_mode=test_mode)
        )
        for device, advertiser in zip(sim.devices, sim.advertisers, strict=True):
            caps = ",".join(c.value for c in device.info.capabilities)
            echo(f"{device.device_id}: {device.info.kind.value} ({caps}) on {url}, advertised as {advertiser.name}")
        how_long = f"for {seconds:g} s" if seconds is not None else "until Ctrl-C"
        devices = f"{len(sim.devices)} device{'s' if len(sim.devices) > 1 else ''}"
        echo(f"{devices} advertised on {', '.join(sim.advertisers[0].addresses)} {how_long}")
        if test_mode:
            first = sim.devices[0].device_id
            echo(f"test mode on: check one with `device-sdk conformance --broker {url} --device-id {first}`")
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.Event().wait()
    return 0
