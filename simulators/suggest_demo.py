"""`device-sdk demo --suggest SKU [--at HH:MM]`: an agent-initiated suggestion to the simulated speaker.

The platform offers a reorder of `sku` to the household's devices (`suggestion.offer` over the bus,
`platform/gateway/suggestion_offers.py`); each answers (`device/suggestion_inbox.py`) from its own
settings (`device/suggestions.py`: opted in for the demo, quiet hours in its time zone, a daily cap,
busy); the household's arbitration picks one that took it. That device says
it is a suggestion with the read-back of a real checkout, and only its user's usual confirmation
signs a mandate, which carries `initiated_by: "agent"`; the verifier records it in the audit log
beside the platform's own `suggestion` records. Bad input (an unknown SKU, a device not in the
household, a time that is not one) is refused before anything is started, spoken or stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.device.client import DeviceClient
from device_sdk.device.suggestion_inbox import SuggestionInbox
from device_sdk.device.suggestions import SuggestionGate, SuggestionSettings, clock_of, quiet_hours, suggestion_text
from device_sdk.locale import locale_for
from device_sdk.platform.checkout.policy import PolicyBook
from device_sdk.platform.gateway.suggestion_offers import offer_suggestion
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode, ProtocolError, RemoteError
from device_sdk.protocol.fields import Decision, Modality, new_id
from device_sdk.protocol.suggestions import INITIATED_BY_AGENT, SuggestionOffer, SuggestionResult
from device_sdk.state import demo_database
from device_sdk.terminal import printable
from device_sdk.voice.replies import ReplyDialog

from .catalog import demo_catalog
from .scenario import DEFAULTS, DEMO_PARTNER, ShopBackend, broker_or_embedded

HOUSEHOLD = ("speaker-1",)
"""The demo household's devices."""


@dataclass
class SuggestionRun:
    """What one suggestion gave: who took it, what was said and heard, and the order if any."""

    suggestion: SuggestionOffer
    results: list[SuggestionResult] = field(default_factory=list)
    speaker: str | None = None
    presented: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)
    outcome: str = "declined"
    declined_reason: str | None = None
    order: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    stopped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "initiated_by": INITIATED_BY_AGENT,
            "suggestion": self.suggestion.model_dump(mode="json", exclude={"v"}),
            "devices": [r.model_dump(mode="json", exclude={"v", "type", "suggestion_id"}) for r in self.results],
            "speaker": self.speaker,
            "outcome": self.outcome,
            "declined_reason": self.declined_reason,
            "presented": self.presented,
            "heard": self.heard,
            "suggestions_stopped": self.stopped,
            "order": self.order,
            "verification": self.verification,
        }


def clock_at(at: str | None, time_zone: str) -> Callable[[], float]:
    """A clock fixed at today's `at` ("HH:MM") in `time_zone`, or the real one."""
    if at is None:
        return time.time
    local = datetime.now(ZoneInfo(time_zone)).replace(second=0, microsecond=0)
    hour = clock_of(at)
    fixed = local.replace(hour=hour.hour, minute=hour.minute).timestamp()
    return lambda: fixed


async def run_suggestion(
    sku: str,
    replies: Sequence[str] = ("confirm",),
    *,
    at: str | None = None,
    to: str | None = None,
    quiet: str | None = None,
    time_zone: str = "UTC",
    opted_in: bool = True,
    broker: BrokerUrl | str | None = None,
    audit: str | Path | None = None,
    policy: PolicyBook | None = None,
    locale: str = "en-US",
    settings_dir: Path | None = None,
    present: Callable[[str], None] | None = None,
    timeout: float = 30.0,
) -> SuggestionRun:
    """Offer a reorder of `sku` to the household (or only to `to`) and run it to its outcome."""
    catalog = demo_catalog()
    product = catalog.product(sku)
    if product is None:
        raise ProtocolError(f"no product with the SKU {sku!r} to suggest", ErrorCode.ITEM_NOT_FOUND)
    if to is not None and to not in HOUSEHOLD:
        raise DeviceSdkError(f"no device {to!r} in the household ({', '.join(HOUSEHOLD)})", ErrorCode.DEVICE_OFFLINE)
    settings = SuggestionSettings(opted_in=opted_in, time_zone=time_zone)
    if quiet is not None:
        settings = settings.model_copy(update={"quiet_hours": quiet_hours(quiet)})
    clock = clock_at(at, time_zone)
    words = locale_for(locale)
    named = product.named(locale)
    offer = SuggestionOffer(suggestion_id=new_id("sug"), sku=sku, name=named.name)
    say = present or (lambda text: None)
    async with contextlib.AsyncExitStack() as stack:
        if settings_dir is None:
            settings_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="device-sdk-sug-")))
        gates = {
            device: SuggestionGate(settings_dir / f"{device}.suggestions.json", clock=clock) for device in HOUSEHOLD
        }
        for gate in gates.values():
            if not gate.path.exists():
                gate.save(settings)
        run = SuggestionRun(offer)
        url, shared = await broker_or_embedded(stack, broker)
        backend = await stack.enter_async_context(ShopBackend(url, shared=shared, database=audit, policy=policy))
        targets = [device_id for device_id in gates if to is None or device_id == to]
        await backend.audit.record("suggestion.offer", suggestion_id=offer.suggestion_id, sku=sku,
                                   initiated_by=INITIATED_BY_AGENT, devices=targets)  # fmt: skip
        devices: dict[str, DeviceClient] = {}
        for device_id in targets:
            key = await asyncio.to_thread(backend.provision, device_id)
            await asyncio.to_thread(backend.verifier.registry.attribute, device_id, *DEMO_PARTNER)
            devices[device_id] = await stack.enter_async_context(DeviceClient(url, device_id, key=key, locale=locale))
            await stack.enter_async_context(SuggestionInbox(devices[device_id], gates[device_id]))
        platform = await stack.enter_async_context(MqttBus(url, f"suggestions-{offer.suggestion_id}"))
        run.results, run.speaker = await offer_suggestion(platform, offer, targets, timeout=timeout)
        for result in run.results:
            await backend.audit.record("suggestion.result", **result.model_dump(mode="json", exclude={"v", "type"}))
        if run.speaker is None:
            reasons = [r.declined_reason for r in run.results if r.declined_reason is not None]
            run.declined_reason = reasons[0].value if reasons else None
            return run
        gate, device = gates[run.speaker], devices[run.speaker]
        gate.count()
        item = named.aliases[0] if named.aliases else named.name
        ask = f"buy a {named.unit} of {item}" if words.language == "en" else f"帮我买一{named.unit}{item}"
        try:
            got = await device.ask(ask, timeout=timeout)
        except RemoteError as exc:
            run.outcome = exc.code.value
            return run
        await backend.audit.record("suggestion.checkout", suggestion_id=offer.suggestion_id,
                                   checkout_id=got.request.checkout_id, session_id=got.session_id,
                                   device_id=run.speaker, initiated_by=INITIATED_BY_AGENT)  # fmt: skip
        for text in (suggestion_text(offer, locale, named.unit), got.readback):
            run.presented.append(text)
            say(text)
        dialog, pending = ReplyDialog(locale=locale), iter(replies)
        decision: Decision | None = None
        while decision is None:
            reply = next(pending, None)
            if gate.stop_asked(reply, locale):
                run.stopped = True
                run.heard.append(reply or "")
                run.presented.append(words.suggestion.stopped)
                say(words.suggestion.stopped)
                decision = Decision.DECLINE
                break
            decision = dialog.feed(reply)
            if decision is None:
                run.presented.append(words.readback.reprompt)
                say(words.readback.reprompt)
        run.heard = [*dialog.heard, *run.heard]
        mandate = None
        if decision is Decision.CONFIRM:
            mandate = device.sign(got, Modality.TEXT, initiated_by="agent")
        placed = await device.answer(got, decision, modality=Modality.TEXT, heard=" / ".join(run.heard) or None,
                                     mandate=mandate, timeout=timeout)  # fmt: skip
        run.outcome = placed.outcome.value
        if placed.order_id:
            run.order = {"order_id": placed.order_id, "total_minor": placed.total_minor, "currency": placed.currency}
        if backend.verifier.last is not None:
            run.verification = backend.verifier.last.as_dict()
        return run


async def suggest_command(args: argparse.Namespace) -> int:
    """`device-sdk demo --suggest SKU`: one JSON object with --json, else what was said and the outcome."""
    from device_sdk.bus.password import broker_url

    say = DEFAULTS[args.locale][1]
    replies = args.reply if args.reply is not None else [say]
    try:
        run = await run_suggestion(
            args.suggest, replies, at=args.at, to=args.to, quiet=args.quiet_hours, locale=args.locale,
            broker=broker_url(args.broker, args.broker_password_file), audit=args.database or demo_database(),
            policy=PolicyBook.load(args.policy),
            present=None if args.json else lambda text: print(printable(f"  speaker says: {text}")),
        )  # fmt: skip
    except DeviceSdkError as exc:
        error = {"code": exc.code.value, "text": exc.text}
        if args.json:
            print(json.dumps({"initiated_by": INITIATED_BY_AGENT, "outcome": None, "error": error}))
        else:
            print(printable(f"error: {exc}"), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(run.as_dict(), ensure_ascii=False))
    else:
        reason = f" ({run.declined_reason})" if run.declined_reason else ""
        print(printable(f"suggestion of {args.suggest} (initiated by the agent): {run.outcome}{reason}"))
    return 0
