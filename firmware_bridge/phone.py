"""The phone intent bridge: a phone OEM's assistant reaches the shopping agent with no app opened.

    async with DeviceClient(url, "phone-1", kind=DeviceKind.PHONE) as phone, \\
            IntentBridge(phone, IntentVerifier(oem_keys), sheet, listen=("127.0.0.1", 8787)):
        ...

An intent (a compact JWS, `firmware_bridge.intents`) arrives on the bus
(`<root>/v1/oem/<oem_id>/<device_id>/intent`, answered on `.../reply`) or at the local endpoint
(`POST /v1/intents`, answered in the response). The bridge checks it (`IntentVerifier`), sends the
image (metadata stripped) and the query to the agent as the phone, and puts the SDK's sheet text
(`readback.compose_phone_sheet`) on the phone's system confirmation sheet. The sheet returns the
user's decision and, for a confirmation, a `phone_sheet` consent mandate signed on the phone over
exactly that text; the bridge sends it on and answers the intent with the order's outcome. When the
phone cannot confirm at all (no sheet, the sheet cannot be shown or does not answer, or the
checkout does not take `phone_sheet`), nothing is ordered: the offer is left unconfirmed and the
answer carries a deep link that hands the cart to the phone's shopping app, to be confirmed there.

A phone paired at provisioning with a speaker or glasses also confirms the offers they hand over
when their own modality cannot get an answer (`HandedOffers`): the same sheet, the phone's key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Protocol
from urllib.parse import urlencode

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_sdk.bus.subscription import Received
from device_sdk.consent.readback import compose_phone_sheet, display_digest
from device_sdk.device.client import DeviceClient
from device_sdk.device.offer import Offer
from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import (
    OUTCOME_OF,
    DeviceSdkError,
    ErrorCode,
    IntentError,
    ProtocolError,
    RemoteError,
)
from device_sdk.protocol.fields import Decision, Modality, Outcome
from device_sdk.protocol.messages import ConfirmationRequest, IntentResult, OrderResult
from device_sdk.service import Service

from .intent_http import HttpLimits, IntentEndpoint
from .intent_locale import check_intent_locale
from .intents import IntentVerifier, OemIntent

log = logging.getLogger(__name__)

DEEP_LINK_BASE = "shopagent://cart"


@dataclass(frozen=True)
class SheetAnswer:
    """What the user did on the sheet; a confirmation carries the mandate the phone signed."""

    decision: Decision
    mandate: str | None = None


class ConfirmationSheet(Protocol):
    """The phone's system confirmation sheet. `present` shows `text` (the SDK's sheet for the
    offer, exactly) and returns the user's answer, or None when no sheet can be shown now (locked
    phone, driving mode): the bridge then hands the cart to the app by a deep link."""

    async def present(self, offer: Offer, text: str) -> SheetAnswer | None: ...


class SheetReply(BaseModel):
    """The sheet service's answer (body of a 200 response): the decision, and the mandate the phone
    signed over exactly the text it showed when the user confirmed."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    decision: Decision
    mandate: Annotated[str, Field(max_length=8192)] | None = None


class HttpSheet:
    """A sheet on the phone's own system service, reached over local HTTP, so the OEM implements it
    in any language (and signs with the platform keystore): the bridge POSTs `{"v": 1, "type":
    "sheet.request", "text", "display_digest", "confirmation"}` to `url` and reads a `SheetReply`.
    503 (or any failure to answer) means no sheet can be shown now."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self.url = url
        self.timeout = timeout

    async def present(self, offer: Offer, text: str) -> SheetAnswer | None:
        body = {
            "v": 1,
            "type": "sheet.request",
            "text": text,
            "display_digest": display_digest(text),
            "confirmation": offer.request.model_dump(mode="json", exclude_none=True),
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http,
                http.post(self.url, json=body) as response,
            ):
                if response.status != 200:
                    log.warning("the sheet at %s answered %d: no sheet", self.url, response.status)
                    return None
                answer = await response.read()
                strict_json.check(answer)  # one reading: no key twice, no deep nesting
                reply = SheetReply.model_validate_json(answer)
        except (aiohttp.ClientError, TimeoutError, ValidationError, ProtocolError) as exc:
            log.warning("the sheet at %s gave no answer (%s): no sheet", self.url, type(exc).__name__)
            return None
        return SheetAnswer(reply.decision, reply.mandate)


def deep_link(offer: Offer, base: str = DEEP_LINK_BASE) -> str:
    """A link that hands the cart to the phone's shopping app, to be confirmed there: the items,
    the payee, the total and the checkout it came from (for the app's records, not to complete)."""
    proposal = offer.request.proposal
    query = {
        "items": ",".join(f"{line.sku}:{line.qty}" for line in proposal.lines),
        "merchant": proposal.merchant.id,
        "total": str(proposal.total_minor),
        "currency": proposal.currency,
        "ref": proposal.checkout_id,
    }
    return f"{base}?{urlencode(query)}"


class IntentBridge(Service):
    """Takes signed intents for one phone, on the bus (`<root>/v1/oem/+/<device_id>/intent`, over
    the phone's own connection, with `bus=True`) and/or at a local HTTP endpoint (`listen=(host,
    port)`; port 0 picks one), and runs each to its outcome as that phone. At most `concurrency`
    intents run at once; more are refused with `busy`. A sheet that gives no answer within
    `sheet_timeout` seconds counts as no sheet (the deep link). The endpoint's header and body
    timeouts, body cap and connection cap are `http_limits` (`intent_http.HttpLimits`)."""

    def __init__(
        self,
        device: DeviceClient,
        verifier: IntentVerifier,
        sheet: ConfirmationSheet | None,
        *,
        bus: bool = True,
        listen: tuple[str, int] | None = None,
        deep_link_base: str = DEEP_LINK_BASE,
        concurrency: int = 4,
        sheet_timeout: float = 90.0,
        http_limits: HttpLimits | None = None,
    ) -> None:
        self.device = device
        self.verifier = verifier
        self.sheet = sheet
        self.bus = bus
        self.listen = listen
        self.deep_link_base = deep_link_base
        self.sheet_timeout = sheet_timeout
        self.port: int | None = None
        """The local endpoint's port once started."""
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.http_limits = http_limits or HttpLimits()
        self.endpoint: IntentEndpoint | None = None
        """The local endpoint once started: its connections and what its limits refused."""

    async def start(self) -> None:
        if self.bus:
            inbox = await self.device.bus.subscribe(self.device.topics.oem_intents_for(self.device.device_id))
            self._spawn(self._take_from_bus(inbox))
        if self.listen is not None:
            self.endpoint = IntentEndpoint(self.handle, lambda: self.device.info.encode(), self.http_limits)
            self.port = await self.endpoint.start(*self.listen)
            log.info("intent endpoint on http://%s:%s/v1/intents", self.listen[0], self.port)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.endpoint is not None:
            await self.endpoint.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # intake ------------------------------------------------------------------------------

    async def _take_from_bus(self, inbox: Any) -> None:
        async for received in inbox:
            self._spawn(self._answer_on_bus(received))

    async def _answer_on_bus(self, received: Received) -> None:
        parts = received.topic.split("/")
        oem_id = parts[-3] if len(parts) >= 3 else ""
        try:
            reply_to = self.device.topics.oem_reply(oem_id, self.device.device_id)
        except DeviceSdkError:
            log.warning("an intent on %s: not an OEM topic", received.topic)
            return
        result = await self.handle(received.payload, oem_id=oem_id)
        with contextlib.suppress(DeviceSdkError):
            await self.device.bus.publish(reply_to, result.encode())

    # one intent --------------------------------------------------------------------------

    async def handle(self, token: bytes, *, oem_id: str | None = None) -> IntentResult:
        """Check one intent and run it to its outcome; every refusal is an answer with a code."""
        if self._slots.locked():
            return IntentResult(code=ErrorCode.BUSY, text="too many intents at once; try again")
        async with self._slots:
            try:
                intent = self.verifier.check(token)
                if oem_id is not None and intent.oem_id != oem_id:
                    text = f"an intent of {intent.oem_id} on {oem_id}'s topic"
                    raise IntentError(text, ErrorCode.WRONG_TOPIC, intent_id=intent.intent_id)
                if intent.device_id != self.device.device_id:
                    raise IntentError(f"this bridge serves {self.device.device_id}", intent_id=intent.intent_id)
                check_intent_locale(intent, self.device.locale)  # another language: refused, nothing asked
            except IntentError as exc:
                log.info("refused an intent: %s", exc)
                return IntentResult(intent_id=exc.intent_id, code=exc.code, text=exc.text)
            try:
                return await self._run(intent)
            except DeviceSdkError as exc:
                return IntentResult(intent_id=intent.intent_id, code=exc.code, text=exc.text[:2000])

    async def _run(self, intent: OemIntent) -> IntentResult:
        extras = intent.extras
        jpeg = extras.jpeg()
        image_ref = await self.device.send_image(jpeg) if jpeg is not None else None
        try:
            offer = await self.device.ask(extras.query, image_ref=image_ref, locale=extras.locale)
        except RemoteError as exc:
            outcome = OUTCOME_OF.get(exc.code)
            return IntentResult(
                intent_id=intent.intent_id, outcome=Outcome(outcome) if outcome else None, code=exc.code, text=exc.text
            )
        text = compose_phone_sheet(offer.request.proposal)
        answer = await on_sheet(self.sheet, offer, text, self.sheet_timeout)
        if answer is None:
            link = deep_link(offer, self.deep_link_base)
            result = await self.device.answer(
                offer, Decision.NO_ANSWER, modality=Modality.PHONE_SHEET, presented=text, heard="handed to the app"
            )
            return IntentResult(
                intent_id=intent.intent_id,
                outcome=result.outcome,
                deep_link=link,
                code=ErrorCode.NOT_CONFIRMED,
                text="the phone could not confirm here: the cart is handed to the app",
            )
        order = await answer_from_sheet(self.device, offer, text, answer)
        return IntentResult(
            intent_id=intent.intent_id,
            outcome=order.outcome,
            order_id=order.order_id,
            total_minor=order.total_minor,
            currency=order.currency,
            text=order.reason,
        )


class HandedOffers(Service):
    """The sheet for the offers that a device paired with this phone at provisioning hands over
    (`DeviceClient.hand_over`, when its voice could not hear the answer): each is shown on `sheet`
    as `compose_phone_sheet` writes it, and confirmed with a `phone_sheet` mandate that the phone
    signs with its own key. It reads the phone's `events()`; `answered` lists how each ended."""

    def __init__(self, device: DeviceClient, sheet: ConfirmationSheet, *, sheet_timeout: float = 90.0) -> None:
        self.device = device
        self.sheet = sheet
        self.sheet_timeout = sheet_timeout
        self.answered: list[OrderResult] = []
        self.refused: list[DeviceSdkError] = []
        """Offers not shown: a bad one, or one that breaks the phone's own limits (`EdgePolicyRefused.says`)."""
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._spawn(self._take())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take(self) -> None:
        async for event in self.device.events():
            if isinstance(event, ConfirmationRequest) and event.handed_over_from is not None:
                self._spawn(self._present(event))

    async def _present(self, request: ConfirmationRequest) -> None:
        text = compose_phone_sheet(request.proposal)
        try:
            offer = Offer.checked(request)
            if self.device.edge is not None:  # the phone's own limits: declined with the rule, never shown
                sheet = Modality.PHONE_SHEET
                await self.device.edge.hold(offer, lambda rule: self.device.answer(
                    offer, Decision.DECLINE, modality=sheet, presented=text, declined_for=rule))  # fmt: skip
        except DeviceSdkError as exc:
            log.warning("a handed-over offer from %s refused: %s", request.handed_over_from, exc)
            self.refused.append(exc)
            return
        answer = await on_sheet(self.sheet, offer, text, self.sheet_timeout)
        try:
            order = await answer_from_sheet(self.device, offer, text, answer or SheetAnswer(Decision.NO_ANSWER))
        except DeviceSdkError as exc:
            log.warning("the answer to %s's offer was refused: %s", request.handed_over_from, exc)
            return
        self.answered.append(order)


async def on_sheet(sheet: ConfirmationSheet | None, offer: Offer, text: str, timeout: float) -> SheetAnswer | None:
    """The user's answer on the sheet; None when there is no sheet, the offer does not take
    `phone_sheet`, or the sheet could not be shown or gave no answer within `timeout` seconds."""
    if sheet is None or Modality.PHONE_SHEET not in offer.request.consent.modalities:
        return None
    try:
        async with asyncio.timeout(timeout):
            return await sheet.present(offer, text)
    except TimeoutError:
        log.warning("the sheet gave no answer within %s s", timeout)
        return None


async def answer_from_sheet(device: DeviceClient, offer: Offer, text: str, answer: SheetAnswer) -> OrderResult:
    """Send the sheet's answer on `offer` (a confirmation with no mandate counts as no answer)."""
    decision = answer.decision
    if decision is Decision.CONFIRM and answer.mandate is None:
        log.warning("the sheet confirmed without a mandate: taken as no answer")
        decision = Decision.NO_ANSWER
    return await device.answer(
        offer,
        decision,
        modality=Modality.PHONE_SHEET,
        presented=text,
        heard=f"sheet: {decision.value}",
        mandate=answer.mandate if decision is Decision.CONFIRM else None,
    )
