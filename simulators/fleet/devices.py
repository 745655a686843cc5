"""One process of the fleet: many simulated devices on real MQTT connections, each a `DeviceClient`
with its own Ed25519 signing key, answering Poisson arrivals of requests.

Run by the fleet generator as `python -m simulators.fleet.devices CONFIG.json`. It ramps its
connections, prints `{"event": "ready", ...}` once every device is online and has a live
controller, waits for a `go T0` line (T0: the wall-clock start of the measured window), then
offers its share of the fleet's request rate (Poisson; or, with no rate, as fast as its workers
go) for the window, lets every session end (bounded), and prints one JSON report:
latencies stamped with their time in the window, every confirmation's and decline's fate as the
device saw it, the down episodes (no connection or no controller answering) and their lengths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_sdk.bus.password import broker_url
from device_sdk.consent.keys import SigningKey
from device_sdk.consent.readback import presentation
from device_sdk.device.client import DeviceClient
from device_sdk.device.offer import Offer
from device_sdk.platform.checkout.profiles import DEFAULT_CAPABILITIES
from device_sdk.protocol.errors import DeviceSdkError, RequestTimeout
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, Outcome

ASKED = ("buy a bottle of milk", "buy two packs of AA batteries", "buy two packs of AA batteries and a bottle of milk")
"""What the simulated users ask for: within the default voice cap, in the demo catalog."""
MODALITY = {
    DeviceKind.SPEAKER: Modality.VOICE,
    DeviceKind.GLASSES: Modality.LENS_TAP,
    DeviceKind.PHONE: Modality.PHONE_SHEET,
}
"""How each kind's user confirms: by voice, a tap on the lens, the phone's system sheet."""
ANSWER_TRIES = 3
"""A confirmation with no result is answered again (the same answer), as a device does."""


def raise_open_files() -> int:
    """The soft limit of open files raised to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class SwarmReport:
    """What one process saw; `as_dict` is its JSON line."""

    connected: int = 0
    connect_failed: int = 0
    proposals: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the window, request → proposal ms)."""
    orders: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the window, confirmation → result ms), ordered or refused."""
    confirmed: list[dict[str, Any]] = field(default_factory=list)
    declined: list[dict[str, Any]] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    arrivals: int = 0
    busy: int = 0
    """Arrivals that found every device of this process in a session (not offered)."""
    down: list[float] = field(default_factory=list)
    """Lengths of the down episodes (s) that ended."""
    still_down: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"event": "report", **{k: v for k, v in self.__dict__.items()}}


class Swarm:
    """The devices of this process and their sessions."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        url = broker_url(config["broker"])
        assert url is not None
        self.url = url
        self.report = SwarmReport()
        self.clients: dict[str, DeviceClient] = {}
        self.kinds: dict[str, DeviceKind] = {}
        self.idle: list[str] = []
        self.random = random.Random(config["seed"])
        self.t0 = 0.0
        self._sessions: set[asyncio.Task[None]] = set()
        self._down_since: dict[str, float] = {}

    async def connect(self) -> None:
        """Connect every device, `ramp` new connections a second at most."""
        every = 1.0 / max(1.0, float(self.config["ramp"]))
        pending: set[asyncio.Task[None]] = set()
        for device in self.config["devices"]:
            pending.add(asyncio.ensure_future(self._connect_one(device)))
            await asyncio.sleep(every)
        await asyncio.gather(*pending)
        self.report.connected = len(self.clients)
        self.idle = list(self.clients)

    async def _connect_one(self, device: dict[str, Any]) -> None:
        kind = DeviceKind(device["kind"])
        key = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(device["key"])))
        client = DeviceClient(
            self.url, device["id"], kind=kind, capabilities=sorted(DEFAULT_CAPABILITIES[kind]), key=key
        )
        if self.config["heartbeat"] is not None:
            client.heartbeat = float(self.config["heartbeat"])
        try:
            await client.start()
        except DeviceSdkError as exc:
            self.report.connect_failed += 1
            self.report.errors[f"connect:{exc.code}"] += 1
            return
        self.clients[device["id"]] = client
        self.kinds[device["id"]] = kind

    async def controllers(self, within: float) -> int:
        """Wait (up to `within` s) until every device has a controller answering; how many have."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(c.controller_alive for c in self.clients.values()):
                break
            await asyncio.sleep(0.2)
        return sum(c.controller_alive for c in self.clients.values())

    def now(self) -> float:
        return round(time.time() - self.t0, 3)

    async def run(self, seconds: float, rate: float | None, workers: int) -> None:
        """Offer arrivals for `seconds`: Poisson at `rate` a second, or `workers` back-to-back loops."""
        watching = asyncio.ensure_future(self._watch())
        end = time.monotonic() + seconds
        if rate is None:
            loops = [asyncio.ensure_future(self._loop(end)) for _ in range(workers)]
            await asyncio.gather(*loops)
        else:
            due = time.monotonic()
            while True:  # arrivals on an absolute schedule: a late loop catches up, the rate stays the rate
                due += self.random.expovariate(rate)
                if due >= end:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                self._arrive()
        drain = float(self.config["drain"])
        if self._sessions:
            await asyncio.wait(set(self._sessions), timeout=drain)
        for task in self._sessions:
            task.cancel()
            self.report.errors["unfinished"] += 1
        await asyncio.sleep(1.0)  # the watcher sees the last recoveries
        watching.cancel()
        self.report.still_down = len(self._down_since)

    def _arrive(self) -> None:
        self.report.arrivals += 1
        if not self.idle:
            self.report.busy += 1
            return
        device_id = self.idle.pop(self.random.randrange(len(self.idle)))
        task = asyncio.ensure_future(self._session(device_id))
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    async def _loop(self, end: float) -> None:
        while time.monotonic() < end:
            if not self.idle:
                await asyncio.sleep(0.05)
                continue
            self.report.arrivals += 1
            device_id = self.idle.pop(self.random.randrange(len(self.idle)))
            await self._session(device_id)

    async def _session(self, device_id: str) -> None:
        """One user's exchange: ask, then confirm or decline what was proposed."""
        client = self.clients[device_id]
        try:
            asked = time.perf_counter()
            try:
                offer = await client.ask(self.random.choice(ASKED), timeout=30.0)
            except DeviceSdkError as exc:
                self.report.errors[f"ask:{exc.code}"] += 1
                return
            self.report.proposals.append((self.now(), round((time.perf_counter() - asked) * 1000, 2)))
            confirm = self.random.random() < float(self.config["confirm_share"])
            await self._answer(client, offer, confirm)
        finally:
            self.idle.append(device_id)

    async def _answer(self, client: DeviceClient, offer: Offer, confirm: bool) -> None:
        request = offer.request
        fate: dict[str, Any] = {"device_id": client.device_id, "checkout_id": request.checkout_id}
        decision = Decision.CONFIRM if confirm else Decision.DECLINE
        modality = MODALITY[self.kinds[client.device_id]]
        shown = presentation(request.proposal, modality)  # the read-back, the lens card or the phone's sheet
        started = time.perf_counter()
        for attempt in range(ANSWER_TRIES):
            try:
                result = await client.answer(offer, decision, modality=modality, presented=shown, timeout=20.0)
            except RequestTimeout:
                fate["seen"] = "timeout"
                continue
            except DeviceSdkError as exc:
                fate.update(seen="refused", code=str(exc.code))
                break
            seen = "ordered" if result.outcome is Outcome.ORDERED and result.order_id else "refused"
            fate.update(seen=seen, outcome=result.outcome.value, order_id=result.order_id, tries=attempt + 1)
            break
        self.report.orders.append((self.now(), round((time.perf_counter() - started) * 1000, 2)))
        if fate.get("seen") == "timeout":
            self.report.errors["answer:timeout"] += 1
        (self.report.confirmed if confirm else self.report.declined).append(fate)

    async def _watch(self, every: float = 0.25) -> None:
        """Each device's down episodes: no broker connection, or no controller answering its pings."""
        while True:
            now = time.monotonic()
            for device_id, client in self.clients.items():
                up = client.bus.connected and client.controller_alive
                since = self._down_since.get(device_id)
                if not up and since is None:
                    self._down_since[device_id] = now
                elif up and since is not None:
                    self.report.down.append(round(now - since, 2))
                    del self._down_since[device_id]
            await asyncio.sleep(every)

    async def close(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.clients.values()), return_exceptions=True)


async def _main(config: dict[str, Any]) -> None:
    raise_open_files()
    swarm = Swarm(config)
    loop = asyncio.get_running_loop()
    try:
        await swarm.connect()
        alive = await swarm.controllers(float(config["settle"]))
        print(json.dumps({"event": "ready", "connected": swarm.report.connected, "alive": alive}), flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.startswith("go "):
            return
        swarm.t0 = float(line.split()[1])
        rate = config["rate"]
        await swarm.run(float(config["seconds"]), None if rate is None else float(rate), int(config["workers"]))
        print(json.dumps(swarm.report.as_dict()), flush=True)
    finally:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await swarm.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(json.loads(Path(sys.argv[1]).read_text())))
