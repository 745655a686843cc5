"""A household from a scenario file, run step by step on the simulators: an embedded broker, the shop
backend, and each device as its own simulator (`SimulatedSpeaker`, `SimulatedGlasses` on a virtual BLE
link driven through the glasses driver, `SimulatedPhone` behind the intent bridge); every step's
outcome is checked against what the file expects.

`device-sdk simulate scenario FILE [--json]` exits 0 when every step gave what was expected, 1 when one
did not (the run goes on and reports every step), 2 for a file that cannot be run (with its line).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
from device_sdk.protocol.errors import DeviceSdkError, RemoteError
from device_sdk.protocol.fields import DeviceKind
from device_sdk.protocol.messages import WakeResult
from firmware_bridge.glasses import CAPABILITIES, GlassesDriver
from firmware_bridge.intents import IntentVerifier, OemKeys
from firmware_bridge.link import GlassesLink, find_glasses
from firmware_bridge.phone import IntentBridge

from .ble_radio import BumbleClient, BumbleScanner, VirtualRadio
from .command_parser import CommandParser
from .glasses import SimulatedGlasses
from .glasses_demo import answer_card
from .phone import SimulatedPhone
from .phone_demo import PHONE_CAPABILITIES, send_intent
from .photos import product_photo
from .scenario import ShopBackend
from .scenario_file import Expect, Scenario, Step
from .speaker import SimulatedSpeaker

RECONNECT_TIMEOUT = 30.0


@dataclass
class StepReport:
    """One step: what it was, what it gave, and each expectation it missed."""

    number: int
    what: str
    got: dict[str, Any] = field(default_factory=dict)
    missed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missed

    def lines(self) -> list[str]:
        facts = ", ".join(f"{k}={v}" for k, v in self.got.items() if k not in ("readback", "card", "sheet"))
        mark = "ok  " if self.ok else "FAIL"
        return [f"{mark} step {self.number}: {self.what}: {facts}", *(f"       {m}" for m in self.missed)]

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.number, "what": self.what, "ok": self.ok, "got": self.got, "missed": self.missed}


@dataclass
class ScenarioReport:
    name: str
    steps: list[StepReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "steps": [step.as_dict() for step in self.steps]}


@dataclass
class _Member:
    """One device of the household and the simulator that uses it."""

    kind: str
    locale: str
    device: DeviceClient
    buses: list[MqttBus]
    speaker: SimulatedSpeaker | None = None
    glasses: SimulatedGlasses | None = None
    driver: GlassesDriver | None = None
    photo: bytes = b""
    phone: SimulatedPhone | None = None
    bridge: IntentBridge | None = None
    oem_bus: MqttBus | None = None
    session: str | None = None
    """The session its last wake word opened (won or lost), for its next request."""
    warm: bool = False


class Household:
    """The devices of one scenario in front of one shop backend, on an embedded broker it can restart."""

    def __init__(self, scenario: Scenario, stack: contextlib.AsyncExitStack) -> None:
        self.scenario, self.stack = scenario, stack
        self.members: dict[str, _Member] = {}

    async def start(self) -> None:
        self.broker = await self.stack.enter_async_context(EmbeddedBroker())
        url = self.broker.url
        self.backend = await self.stack.enter_async_context(ShopBackend(url, shared=False))
        self.vocabulary = CommandParser(self.backend.catalog).vocabulary()
        for spec in self.scenario.devices:
            kind = DeviceKind(spec.kind)
            key = await asyncio.to_thread(self.backend.provision, spec.id, kind)
            if spec.partner is not None and spec.model is not None:
                await asyncio.to_thread(self.backend.verifier.registry.attribute, spec.id, spec.partner, spec.model)
            locale = spec.locale or self.scenario.locale
            join = {"speaker": self._speaker, "glasses": self._glasses, "phone": self._phone}[spec.kind]
            self.members[spec.id] = await join(url, spec.id, key, locale, spec.room)

    async def _speaker(self, url: BrokerUrl, device_id: str, key: SigningKey, locale: str, room: str | None) -> _Member:
        device = await self.stack.enter_async_context(DeviceClient(url, device_id, key=key, locale=locale, room=room))
        return _Member("speaker", locale, device, [device.bus], speaker=SimulatedSpeaker(device))

    async def _glasses(self, url: BrokerUrl, device_id: str, key: SigningKey, locale: str, room: str | None) -> _Member:
        radio, name = VirtualRadio(), f"Lens-{sum(m.kind == 'glasses' for m in self.members.values()):02d}"
        member: _Member | None = None
        glasses = await self.stack.enter_async_context(
            SimulatedGlasses(radio, name, device_id=device_id, photo=lambda: member.photo if member else b"")
        )
        found = await find_glasses(name=glasses.name, timeout=5.0, backend=BumbleScanner, central=await radio.central())
        link = await self.stack.enter_async_context(GlassesLink(found[0].device, backend=BumbleClient))
        device = await self.stack.enter_async_context(DeviceClient(
            url, device_id, kind=DeviceKind.GLASSES, capabilities=CAPABILITIES, key=key, locale=locale, room=room
        ))  # fmt: skip
        driver = GlassesDriver(link, device, decision_timeout=5.0)
        member = _Member("glasses", locale, device, [device.bus], glasses=glasses, driver=driver)
        return member

    async def _phone(self, url: BrokerUrl, device_id: str, key: SigningKey, locale: str, room: str | None) -> _Member:
        phone = SimulatedPhone(device_id, key, SigningKey.generate())
        verifier = IntentVerifier(OemKeys([(phone.oem_id, phone.oem_key.public)]))
        device = await self.stack.enter_async_context(DeviceClient(
            url, device_id, kind=DeviceKind.PHONE, capabilities=PHONE_CAPABILITIES, locale=locale, room=room
        ))  # fmt: skip
        bridge = await self.stack.enter_async_context(IntentBridge(device, verifier, phone, listen=("127.0.0.1", 0)))
        oem_bus = await self.stack.enter_async_context(MqttBus(url, f"oem-{phone.oem_id}-{device_id}"))
        return _Member("phone", locale, device, [device.bus, oem_bus], phone=phone, bridge=bridge, oem_bus=oem_bus)

    # steps ------------------------------------------------------------------------------------

    async def run(self, number: int, step: Step) -> StepReport:
        if step.fault is not None:
            report = StepReport(number, f"fault {step.fault}")
            report.got["reconnected"] = await self._restart_broker()
        elif step.wake is not None:
            report = StepReport(number, f"wake word heard by {', '.join(step.wake)}")
            await self._wake(step, report)
        else:
            assert step.device is not None
            member = self.members[step.device]
            report = StepReport(number, f"{step.device} ({member.kind}): {step.say!r}")
            order = {"speaker": self._ask_speaker, "glasses": self._ask_glasses, "phone": self._ask_phone}[member.kind]
            try:
                await order(member, step, report)
            except DeviceSdkError as exc:  # a timeout, the bus gone: the step's outcome, not the run's end
                report.got["error"] = exc.code.value
        report.got["orders"] = self.backend.checkout.placed
        report.missed = missed(step.expect, report.got)
        return report

    async def _ask_speaker(self, member: _Member, step: Step, report: StepReport) -> None:
        assert member.speaker is not None
        assert step.say is not None
        session, member.session = member.session, None
        run = await member.speaker.run(step.say, step.answer or [], timeout=30.0, session_id=session)
        _outcome(report, run.result, run.error)
        if run.offer is not None:
            report.got["readback"] = run.offer.readback

    async def _ask_glasses(self, member: _Member, step: Step, report: StepReport) -> None:
        assert member.glasses is not None
        assert member.driver is not None
        if step.look_at is not None:
            member.photo = self._photo(step.look_at)
        wearer = asyncio.create_task(answer_card(member.glasses, step.tap or "confirm"))
        try:
            run = await member.driver.run(step.say, look=step.look_at is not None, vocabulary=self.vocabulary)
        finally:
            wearer.cancel()
            await asyncio.gather(wearer, return_exceptions=True)
        _outcome(report, run.result, run.error)
        if run.gesture is not None:
            report.got["gesture"] = run.gesture.value
        if run.card is not None:
            report.got["card"] = run.card.text

    async def _ask_phone(self, member: _Member, step: Step, report: StepReport) -> None:
        assert member.phone is not None
        assert member.bridge is not None
        assert step.say is not None
        member.phone.tap = step.sheet or "confirm"
        image = self._photo(step.look_at) if step.look_at is not None else None
        token = member.phone.intent(step.say, image=image, locale=member.locale)
        result = await send_intent(step.via or "bus", token, bus=member.oem_bus, bridge=member.bridge,
                                   oem_id=member.phone.oem_id)  # fmt: skip
        if result.outcome is not None:
            report.got["outcome"] = result.outcome.value
        if result.code is not None:
            report.got["error"] = result.code.value
        if result.total_minor is not None:
            report.got["total_minor"] = result.total_minor
        if member.phone.shown:
            report.got["sheet"] = member.phone.shown[-1]

    def _photo(self, sku: str) -> bytes:
        product = self.backend.catalog.product(sku)
        if product is None:
            raise ValueError(f"no product {sku!r} in the catalog")
        return product_photo(product.sku, product.name)

    async def _wake(self, step: Step, report: StepReport) -> None:
        assert step.wake is not None
        for device_id in step.wake:  # the gateway takes each device and learns its room first
            member = self.members[device_id]
            if not member.warm:
                await member.device.wake(1.0, -20.0)
                member.warm = True
        heard = list(step.wake.items())
        results: list[WakeResult] = await asyncio.gather(
            *(self.members[d].device.wake(h.confidence, h.loudness) for d, h in heard)
        )
        for (device_id, _), result in zip(heard, results, strict=True):
            self.members[device_id].session = result.session_id
            if result.granted:
                report.got["winner"] = device_id
        report.got["granted"] = sum(r.granted for r in results)

    async def _restart_broker(self) -> bool:
        """Stop the broker and start it again; True once every connection came back: each device's, the
        gateway's and the agent worker's (a request published before the agent resubscribed is lost)."""
        buses = [bus for member in self.members.values() for bus in member.buses]
        buses += [self.backend.gateway.bus, *([self.backend.worker.bus] if self.backend.worker else [])]
        before = {id(bus): bus.reconnects for bus in buses}
        await self.broker.stop()
        await self.broker.start()
        try:
            async with asyncio.timeout(RECONNECT_TIMEOUT):
                while any(bus.reconnects == before[id(bus)] for bus in buses):  # noqa: ASYNC110 - a counter
                    await asyncio.sleep(0.05)
                for bus in buses:
                    await bus.wait_connected(RECONNECT_TIMEOUT)
        except TimeoutError:
            return False
        return True


def _outcome(report: StepReport, result: Any, error: RemoteError | None) -> None:
    if result is not None:
        report.got["outcome"] = result.outcome.value
        if result.total_minor is not None:
            report.got["total_minor"] = result.total_minor
    if error is not None:
        report.got["error"] = error.code.value


CONTAINS = {"readback_contains": "readback", "card_contains": "card", "sheet_contains": "sheet"}


def missed(expect: Expect, got: dict[str, Any]) -> list[str]:
    """Every expectation `got` does not meet, as a sentence."""
    out = []
    for name, wanted in expect.model_dump(exclude_none=True).items():
        if name in CONTAINS:
            shown = got.get(CONTAINS[name])
            if shown is None or wanted not in shown:
                out.append(f"expected the {CONTAINS[name]} to contain {wanted!r}, it was {shown!r}")
        elif got.get(name) != wanted:
            out.append(f"expected {name} {wanted!r}, got {got.get(name)!r}")
    return out


async def run_scenario(scenario: Scenario, *, on_step: Callable[[StepReport], None] | None = None) -> ScenarioReport:
    """Run every step of `scenario` in a fresh household; a step that misses its expectations is
    reported and the run goes on."""
    report = ScenarioReport(scenario.name)
    async with contextlib.AsyncExitStack() as stack:
        household = Household(scenario, stack)
        await household.start()
        for number, step in enumerate(scenario.steps, 1):
            done = await household.run(number, step)
            report.steps.append(done)
            if on_step is not None:
                on_step(done)
    return report


async def run_scenario_file(path: str | Path, **kw: Any) -> ScenarioReport:
    from .scenario_file import load_scenario

    return await run_scenario(load_scenario(path), **kw)
