"""A simulated phone: its OEM's system assistant signs intents with the OEM's key, and its system
confirmation sheet shows the SDK's sheet text and, when the user taps Confirm, signs a
`phone_sheet` consent mandate with the phone's own device key."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from joserfc import jws

from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import mandate_for
from device_sdk.consent.readback import display_digest
from device_sdk.device.offer import Offer
from device_sdk.protocol.fields import Decision, Modality, new_id
from device_sdk.protocol.messages import ConfirmationRequest
from firmware_bridge.intents import ACTION_BUY, ALG, JWS_TYPE, IntentExtras, OemIntent, sign_intent
from firmware_bridge.phone import SheetAnswer, SheetReply


def sign_as_taken(key: SigningKey, intent: OemIntent) -> str:
    """What an OEM that does not use `sign_intent` signs: the intent as it is, its picture with
    whatever EXIF, GPS and second pictures the camera wrote (the bridge strips it before publishing)."""
    header = {"alg": ALG, "kid": key.public.kid, "typ": JWS_TYPE}
    payload = intent.model_dump_json(exclude_none=True).encode()
    return jws.serialize_compact(header, payload, key.jwk(), algorithms=[ALG])


SheetTap = Literal["confirm", "cancel", "none", "unavailable"]
"""What the simulated user does with the sheet; `unavailable`: the sheet cannot be shown at all."""


@dataclass
class SimulatedPhone:
    device_id: str
    device_key: SigningKey
    oem_key: SigningKey
    oem_id: str = "oem-demo"
    package: str = "com.oemdemo.assistant"
    tap: SheetTap = "confirm"
    shown: list[str] = field(default_factory=list)
    """Every sheet put on the screen, as shown."""

    def intent(
        self,
        query: str,
        *,
        image: bytes | None = None,
        locale: str = "en-US",
        action: str = ACTION_BUY,
        timestamp_ms: int | None = None,
        intent_id: str | None = None,
        as_taken: bool = False,
    ) -> str:
        """What the assistant sends for `query`: a signed intent (a compact JWS). `sign_intent`
        signs the image stripped; `as_taken` signs it as the camera wrote it (`sign_as_taken`)."""
        intent = OemIntent(
            intent_id=intent_id or new_id("int"),
            action=action,
            extras=IntentExtras(
                query=query, image=base64.b64encode(image).decode() if image is not None else None, locale=locale
            ),
            source_package=self.package,
            oem_id=self.oem_id,
            device_id=self.device_id,
            timestamp=int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        )
        return sign_as_taken(self.oem_key, intent) if as_taken else sign_intent(self.oem_key, intent)

    async def present(self, offer: Offer, text: str) -> SheetAnswer | None:
        """The system sheet: show `text`; the user's tap; a mandate over exactly `text` on Confirm."""
        if self.tap == "unavailable":
            return None
        self.shown.append(text)
        if self.tap == "cancel":
            return SheetAnswer(Decision.DECLINE)
        if self.tap == "none":
            return SheetAnswer(Decision.NO_ANSWER)
        mandate = mandate_for(
            offer.request,
            self.device_key,
            device_id=self.device_id,
            modality=Modality.PHONE_SHEET,
            display_digest=display_digest(text),
        )
        return SheetAnswer(Decision.CONFIRM, mandate)


class SheetServer:
    """The simulated phone's system service for `HttpSheet`: `POST /sheet` shows the sheet on
    `phone` and answers with its `SheetReply` (503 when no sheet can be shown).
    `async with SheetServer(phone) as server:` then `server.url`."""

    def __init__(self, phone: SimulatedPhone, host: str = "127.0.0.1", port: int = 0) -> None:
        self.phone = phone
        self._where = (host, port)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> SheetServer:
        app = web.Application()
        app.router.add_post("/sheet", self._sheet)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, *self._where).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/sheet"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _sheet(self, request: web.Request) -> web.Response:
        body = await request.json()
        offer = Offer(ConfirmationRequest.model_validate(body["confirmation"]))
        answer = await self.phone.present(offer, body["text"])
        if answer is None:
            return web.Response(status=503)
        reply = SheetReply(decision=answer.decision, mandate=answer.mandate)
        return web.Response(body=reply.model_dump_json(exclude_none=True), content_type="application/json")
