"""The phone flow end to end with no phone: a simulated OEM assistant sends a signed intent, over the
bus or to the bridge's local endpoint; the bridge asks the agent as the phone; the simulated system
sheet shows the order and the user's tap signs the consent mandate.

`device-sdk simulate phone --say TEXT --sheet confirm|cancel|none|unavailable --via bus|http
[--photo SKU] [--locale zh-CN] [--json]`. With `--locale zh-CN` the phone declares zh-CN, the
assistant's intent carries Chinese text ("帮我买两包五号电池"; with a photo "帮我买两个这个") and the
sheet is Chinese.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
from device_sdk.platform.timeline import Step, Timeline
from device_sdk.protocol.fields import Capability, DeviceKind
from device_sdk.protocol.messages import IntentResult, decode
from firmware_bridge.intents import IntentVerifier, OemKeys
from firmware_bridge.phone import IntentBridge

from .phone import SheetTap, SimulatedPhone
from .photos import product_photo
from .scenario import ShopBackend, broker_or_embedded, timeline_settle

Via = Literal["bus", "http"]
SAY = {"en-US": "buy two packs of AA batteries", "zh-CN": "帮我买两包五号电池"}
SAY_PHOTO = {"en-US": "buy two of these", "zh-CN": "帮我买两个这个"}
"""What the simulated user asks the assistant by default, per locale (with a photo: two of what it shows)."""
PHONE_CAPABILITIES = (Capability.DISPLAY, Capability.TOUCH, Capability.MIC, Capability.CAMERA, Capability.TEXT)


@dataclass
class PhoneDemo:
    result: IntentResult
    sheet: str | None
    orders: int
    steps: list[Step] = field(default_factory=list)
    mandate_modality: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.result.model_dump(mode="json", exclude_none=True),
            "sheet": self.sheet,
            "orders": self.orders,
            "mandate_modality": self.mandate_modality,
            "steps": [step.as_dict() for step in self.steps],
        }


async def send_intent(via: Via, token: str, *, bus: MqttBus | None, bridge: IntentBridge, oem_id: str) -> IntentResult:
    """What an OEM assistant does: publish on its intent topic and wait on its reply topic, or POST
    to the bridge's local endpoint."""
    if via == "http":
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{bridge.port}/v1/intents", data=token.encode()) as response,
        ):
            message = decode(await response.read())
    else:
        assert bus is not None
        topics, phone = bridge.device.topics, bridge.device.device_id
        async with await bus.subscribe(topics.oem_reply(oem_id, phone)) as replies:
            await bus.publish(topics.oem_intent(oem_id, phone), token.encode())
            message = decode((await replies.get(timeout=60.0)).payload)
    if not isinstance(message, IntentResult):
        raise TypeError(f"the bridge answered {message.type}")
    return message


async def run_phone(
    say: str | None = None,
    *,
    tap: SheetTap = "confirm",
    via: Via = "bus",
    photo: str | None = None,
    broker: BrokerUrl | str | None = None,
    device_id: str = "phone-1",
    locale: str = "en-US",
) -> PhoneDemo:
    """One intent from the assistant to its outcome, with the user answering the sheet with `tap`;
    with `photo` (a catalog SKU) the intent carries a photo of that product; `locale` is the phone's
    and the intent's language (`say` by default: `SAY`, or `SAY_PHOTO` with a photo, of the locale)."""
    say = say or (SAY_PHOTO if photo is not None else SAY)[locale]
    async with contextlib.AsyncExitStack() as stack:
        url, shared = await broker_or_embedded(stack, broker)
        timeline = await stack.enter_async_context(Timeline(url))
        backend = await stack.enter_async_context(ShopBackend(url, shared=shared))
        key = await asyncio.to_thread(backend.provision, device_id, DeviceKind.PHONE)
        phone = SimulatedPhone(device_id, key, SigningKey.generate())
        phone.tap = tap
        verifier = IntentVerifier(OemKeys([(phone.oem_id, phone.oem_key.public)]))
        device = await stack.enter_async_context(
            DeviceClient(url, device_id, kind=DeviceKind.PHONE, capabilities=PHONE_CAPABILITIES, locale=locale)
        )
        bridge = await stack.enter_async_context(IntentBridge(device, verifier, phone, listen=("127.0.0.1", 0)))
        oem_bus = await stack.enter_async_context(MqttBus(url, f"oem-{phone.oem_id}")) if via == "bus" else None
        image = None
        if photo is not None:
            product = backend.catalog.product(photo)
            if product is None:
                raise ValueError(f"no product {photo!r} in the catalog")
            image = product_photo(product.sku, product.name)
        result = await send_intent(
            via, phone.intent(say, image=image, locale=locale), bus=oem_bus, bridge=bridge, oem_id=phone.oem_id
        )
        await timeline_settle(timeline)
        verification = backend.verifier.last
        return PhoneDemo(
            result,
            phone.shown[-1] if phone.shown else None,
            backend.checkout.placed,
            list(timeline.steps),
            verification.modality if verification is not None else None,
        )
