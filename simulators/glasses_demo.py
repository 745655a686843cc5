"""The glasses flow end to end with no hardware: simulated glasses on a virtual BLE link, driven
through bleak, carried onto the bus by the glasses driver, in front of the shop backend.

`device-sdk simulate glasses --say TEXT --tap confirm|cancel|none --png PATH [--locale zh-CN] [--voice]
[--json]`. With `--locale zh-CN` the glasses declare zh-CN, the wearer asks in Chinese ("帮我买两个这个":
the agent reads 这个 as what the photo shows), and the card on the lens is Chinese; spoken, the
natural Mandarin voice says it and Whisper hears it in Chinese.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from device_sdk.bus.url import BrokerUrl
from device_sdk.device.client import DeviceClient
from device_sdk.locale import DEFAULT_LOCALE, locale_for
from device_sdk.platform.timeline import Step, Timeline
from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.fields import DeviceKind
from device_sdk.voice.asr import AsrEngine
from device_sdk.voice.engines import hearing_named
from device_sdk.voice.sphinx import SphinxEngine
from device_sdk.voice.tts import synthesize, trim_silence
from firmware_bridge import gatt
from firmware_bridge.glasses import CAPABILITIES, GlassesDriver, GlassesRun
from firmware_bridge.link import GlassesLink, find_glasses

from .ble_radio import BumbleClient, BumbleScanner, VirtualRadio
from .command_parser import CommandParser
from .glasses import SimulatedGlasses
from .photos import product_photo
from .scenario import ShopBackend, broker_or_embedded, timeline_settle
from .user_voices import speak, user_voice

Tap = Literal["confirm", "cancel", "none"]
SAY = {"en-US": "buy two of these", "zh-CN": "帮我买两个这个"}
"""What the simulated wearer asks for by default, per locale: two of what they look at."""


@dataclass
class GlassesDemo:
    run: GlassesRun
    steps: list[Step] = field(default_factory=list)
    orders: int = 0
    photo_bytes: int = 0
    png: str | None = None
    locale: str = DEFAULT_LOCALE

    def as_dict(self) -> dict[str, Any]:
        run = self.run
        return {
            "locale": self.locale,
            "said": run.said,
            "heard": run.heard,
            "image_ref": run.image_ref,
            "photo_bytes": self.photo_bytes,
            "card": run.card.text if run.card else None,
            "card_digest": run.card.digest if run.card else None,
            "gesture": run.gesture.value if run.gesture else None,
            "decision": run.decision.value if run.decision else None,
            "outcome": run.result.outcome.value if run.result else (run.error.code.value if run.error else None),
            "order_id": run.result.order_id if run.result else None,
            "orders": self.orders,
            "png": self.png,
            "steps": [step.as_dict() for step in self.steps],
        }


async def run_glasses(
    say: str | None = None,
    *,
    tap: Tap = "confirm",
    png: str | Path | None = None,
    voice: bool = False,
    engine: AsrEngine | None = None,
    broker: BrokerUrl | str | None = None,
    sku: str = "bat-aa-4",
    device_id: str = "glasses-1",
    decision_timeout: float = 5.0,
    locale: str = DEFAULT_LOCALE,
) -> GlassesDemo:
    """The wearer looks at `sku`, says `say` (default: `SAY` of the locale; typed, or spoken through
    the glasses' microphone with `voice`), and answers the card on the lens with `tap`; the lens is
    saved to `png`. `locale` is the glasses' (declared in `device.info`) and the wearer's language."""
    say = say or SAY.get(locale) or locale_for(locale).lens.ask
    async with contextlib.AsyncExitStack() as stack:
        url, shared = await broker_or_embedded(stack, broker)
        timeline = await stack.enter_async_context(Timeline(url))
        backend = await stack.enter_async_context(ShopBackend(url, shared=shared))
        product = backend.catalog.product(sku)
        if product is None:
            raise ValueError(f"no product {sku!r} in the catalog")
        key = await asyncio.to_thread(backend.provision, device_id, DeviceKind.GLASSES)
        radio = VirtualRadio()
        photo = product_photo(product.sku, product.name)
        glasses = await stack.enter_async_context(SimulatedGlasses(radio, device_id=device_id, photo=lambda: photo))
        central = await radio.central()
        found = await find_glasses(name=glasses.name, timeout=5.0, backend=BumbleScanner, central=central)
        if not found:
            raise RuntimeError("the simulated glasses were not heard advertising")
        link = await stack.enter_async_context(GlassesLink(found[0].device, backend=BumbleClient, rssi=found[0].rssi))
        device = await stack.enter_async_context(
            DeviceClient(url, device_id, kind=DeviceKind.GLASSES, capabilities=CAPABILITIES, key=key, locale=locale)
        )
        driver = GlassesDriver(link, device, decision_timeout=decision_timeout)
        wearer = asyncio.create_task(answer_card(glasses, tap, Path(png) if png else None))
        text: str | None = say
        asr: AsrEngine | None = None
        if voice:
            asr = engine if engine is not None else await asyncio.to_thread(wearer_hearing, locale)
            speech = await asyncio.to_thread(wearer_speech, say, locale)
            speaking = asyncio.create_task(glasses.speak(speech))
            text = None
        try:
            vocabulary = CommandParser(backend.catalog).vocabulary()
            run = await driver.run(text, engine=asr, vocabulary=vocabulary)
            run.said = say
        finally:
            if voice:
                speaking.cancel()
            wearer.cancel()
            await asyncio.gather(wearer, return_exceptions=True)
        await timeline_settle(timeline)
        return GlassesDemo(
            run, list(timeline.steps), backend.checkout.placed, len(photo), str(png) if png else None, locale
        )


def wearer_hearing(locale: str) -> AsrEngine:
    """What hears the wearer through the glasses' microphone: pocketsphinx for a locale it has a
    model of, else the locale's own hearing (Whisper in Chinese for zh-CN)."""
    if locale_for(locale).voice.hearing == "hybrid":
        return SphinxEngine()
    return hearing_named(locale=locale).engine


def wearer_speech(say: str, locale: str) -> bytes:
    """`say` spoken by the wearer: espeak-ng in English (what pocketsphinx's grammar hears), the
    locale's simulated user's voice otherwise (the natural Mandarin voice for zh-CN)."""
    if locale_for(locale).voice.hearing == "hybrid":
        return trim_silence(synthesize(say))
    return speak(say, user_voice(locale))


async def answer_card(glasses: SimulatedGlasses, tap: Tap, png: Path | None = None) -> None:
    """Reads the card on the lens, saves what it looks like, then taps, swipes or does nothing."""
    await glasses.wait_card(timeout=60.0)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(glasses.screen.save, png)
    if tap == "confirm":
        await glasses.gesture(gatt.Gesture.TAP)
    elif tap == "cancel":
        await glasses.gesture(gatt.Gesture.SWIPE)


async def glasses_for_bridge(
    stack: contextlib.AsyncExitStack,
    *,
    device_id: str,
    say: str | None,
    tap: str,
    sessions: int,
    scan_timeout: float,
    locale: str = DEFAULT_LOCALE,
) -> GlassesLink:
    """`firmware-bridge run --simulated`: simulated glasses on a virtual link in this process, found
    and reached through bleak as real ones are, with a wearer who uses them and speaks `locale`
    (entry point `glasses` of the group `firmware_bridge.simulated`)."""
    if tap not in ("confirm", "cancel", "none"):
        raise ConfigError(f"--tap {tap!r}: confirm, cancel or none")
    radio = VirtualRadio()
    glasses = await stack.enter_async_context(SimulatedGlasses(radio, device_id=device_id))
    central = await radio.central()
    found = await find_glasses(name=glasses.name, timeout=scan_timeout, backend=BumbleScanner, central=central)
    task = asyncio.create_task(_wearer(glasses, say, cast(Tap, tap), sessions, locale))
    stack.push_async_callback(_cancel, task)
    return GlassesLink(found[0].device, backend=BumbleClient, rssi=found[0].rssi)


async def _wearer(glasses: SimulatedGlasses, say: str | None, tap: Tap, sessions: int, locale: str) -> None:
    """Taps the blank lens, speaks `say` if given, answers the card; once per session."""
    speech = await asyncio.to_thread(wearer_speech, say, locale) if say else None
    count = 0
    while sessions == 0 or count < sessions:
        await glasses.wait_welcomed(timeout=30.0)
        answering = asyncio.create_task(answer_card(glasses, tap))
        await asyncio.sleep(0.05)
        await glasses.gesture(gatt.Gesture.TAP)
        if speech is not None:
            await glasses.speak(speech)
        await answering
        await asyncio.sleep(0.5)  # the outcome, then the lens is cleared
        count += 1


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
