"""One conformance run: a device under test driven over the bus, as a gateway would, through the
protocol's requirements (`requirements.REQUIREMENTS`), directing its simulated user with the test
mode's `conformance.control` messages. Every wait is bounded; the whole run ends within `budget`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import PublicKey, b64url_decode
from device_sdk.protocol.conformance import ConformanceControl
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode
from device_sdk.protocol.fields import Capability, Decision, DeviceKind, Outcome, new_id
from device_sdk.protocol.messages import (
    AgentRequest,
    ConfirmationRequest,
    ConfirmationResult,
    DeviceInfo,
    DeviceStatus,
    Error,
    OrderResult,
    Ping,
)
from device_sdk.protocol.topics import Topics, check_id

from .connection import audio, clean_reconnect, drop_and_reconnect, heartbeat
from .observer import Observer, Seen
from .offers import MandateCheck, binding_problems, offer_for, tampered
from .requirements import Findings, report

TEXTS = {
    "confirm": "buy two packs of AA batteries",
    "decline": "buy a bottle of milk",
    "no_answer": "buy a pack of socks",
    "tampered": "buy a yoga mat",
    "expired": "buy a box of tea",
    "error": "buy a phone charger",
    "after_drop": "buy a bar of soap",
}
"""What the simulated user says in each session: a device in test mode sends it verbatim."""
GARBAGE = (b"{not json", b'{"v": 1, "type": "conformance.unknown_type"}', b'{"v": 99, "type": "pong"}')


@dataclass
class Settings:
    status_wait: float = 30.0
    """How long to wait for the retained status."""
    step_wait: float = 10.0
    """How long to wait for each answer the device owes."""
    quiet: float = 4.0
    """How long a device must stay silent to pass a "does not" requirement."""
    budget: float = 85.0
    """The whole run, at most."""
    heartbeat_gap: float = 35.0
    """The widest gap between two pings that R-HEARTBEAT-INTERVAL takes (the SDK's 30 s, and 5 more)."""


class ConformanceRun:
    """`await ConformanceRun(url, "speaker-1").run()` returns the report (`requirements.report`)."""

    def __init__(
        self,
        url: BrokerUrl | str,
        device_id: str,
        *,
        kind: DeviceKind | None = None,
        device_key: PublicKey | None = None,
        topics: Topics | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.url = url
        self.device_id = check_id(device_id, "device id")
        self.kind = kind
        self.key = device_key
        self.topics = topics or Topics()
        self.settings = settings or Settings()
        self.run_id = new_id("conf")
        self.found = Findings()
        self.requests: dict[str, AgentRequest] = {}
        self._obs: Observer | None = None
        self._deadline = 0.0
        self._why_not = "not reached"
        self.info: DeviceInfo | None = None
        self._stale: ConfirmationRequest | None = None

    @property
    def obs(self) -> Observer:
        assert self._obs is not None
        return self._obs

    def left(self, wanted: float) -> float:
        return max(0.0, min(wanted, self._deadline - self.obs.now()))

    async def run(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        self._deadline = began + self.settings.budget
        async with MqttBus(self.url, f"conformance-{self.run_id}") as bus:
            self._obs = Observer(bus, self.topics, self.device_id, f"conformance-{self.run_id}")
            await self.obs.start()
            try:
                await self._steps(began)
            finally:
                await self.obs.stop()
        kind = self.kind.value if self.kind else None
        return report(self.device_id, kind, self.found.outcomes(self._why_not), loop.time() - began)

    async def _steps(self, began: float) -> None:
        if not await self._retained():
            return
        try:
            if await self._confirmed_session():
                await self._declined_session()
                await self._unanswered_session()
                await asyncio.gather(self._refusal("tampered"), self._refusal("expired"), self._error_answer())
                await audio(self)
                await drop_and_reconnect(self)
                await clean_reconnect(self)
                self._stale_offer_unanswered()
            self._session_ids()
        except DeviceSdkError as exc:
            self._why_not = f"the run stopped: {exc}"
        # one heartbeat at the least (the SDK pings every 30 s)
        wait = self.left(max(0.0, began + self.settings.heartbeat_gap - self.obs.now()))
        await self.obs.wait(lambda s: isinstance(s.message, Ping), wait)
        heartbeat(self, began)

    # retained status and info --------------------------------------------------------------

    async def _retained(self) -> bool:
        f, obs = self.found, self.obs
        wait = self.left(self.settings.status_wait)
        status = await obs.wait(lambda s: isinstance(s.message, DeviceStatus) and s.message.online, wait)
        if status is None:
            offline = (
                " (the retained one says offline)" if obs.find(lambda s: isinstance(s.message, DeviceStatus)) else ""
            )
            where = self.topics.device_status(self.device_id)
            f.record("R-STATUS-RETAINED", False, f"no online device.status on {where} within {wait:g} s{offline}")
            self._why_not = "the device never said it is online"
            return False
        if not status.retain:  # it came online after the check began: is what it said kept?
            status = await self._kept(status, DeviceStatus, self.topics.device_status(self.device_id))
        s: DeviceStatus = status.message
        problems = [
            p
            for p, bad in (
                ("not retained", not status.retain),
                ("online is false", not s.online),
                (f"QoS {status.qos}, not 1", status.qos < 1),
                (f"names device {s.device_id}", s.device_id != self.device_id),
            )
            if bad
        ]
        f.record(
            "R-STATUS-RETAINED",
            not problems,
            "; ".join(problems)
            or f"retained, online, QoS 1, kind {s.kind.value}, capabilities {_caps(s.capabilities)}",
        )
        seen = await obs.wait(lambda x: isinstance(x.message, DeviceInfo), self.left(3.0))
        if seen is not None and not seen.retain:
            seen = await self._kept(seen, DeviceInfo, self.topics.device_info(self.device_id))
        if seen is None:
            f.record("R-INFO-RETAINED", False, "no device.info within 3 s of the status")
            f.record("R-INFO-PUBLIC-KEY", False if self.key is None else None, "no device.info")
        else:
            self._info(seen, s)
        if self.kind is None:
            self.kind = seen.message.kind if seen is not None else s.kind
        return True

    async def _kept(self, seen: Seen, model: type[DeviceStatus | DeviceInfo], topic: str) -> Seen:
        """The retained copy of what came live on `topic`, from a subscription of its own (else `seen`)."""
        since = self.obs.now()
        extra = await self.obs.bus.subscribe(topic)
        try:
            kept = await self.obs.wait(lambda s: isinstance(s.message, model) and s.retain, self.left(3.0), since)
        finally:
            await self.obs.bus.unsubscribe(extra)
        return kept or seen

    def _info(self, seen: Seen, status: DeviceStatus) -> None:
        info: DeviceInfo = seen.message
        problems = [
            p
            for p, bad in (
                ("not retained", not seen.retain),
                (f"names device {info.device_id}", info.device_id != self.device_id),
                (f"kind {info.kind.value}, the status says {status.kind.value}", info.kind != status.kind),
                ("no capabilities", not info.capabilities),
                (
                    f"capabilities {_caps(info.capabilities)}, the status says {_caps(status.capabilities)}",
                    set(info.capabilities) != set(status.capabilities),
                ),
            )
            if bad
        ]
        self.found.record(
            "R-INFO-RETAINED",
            not problems,
            "; ".join(problems)
            or f"retained: kind {info.kind.value}, capabilities {_caps(info.capabilities)}, "
            f"locale {info.locale or 'en-US'}",
        )
        self.info = info
        if info.public_key is None:
            self.found.record("R-INFO-PUBLIC-KEY", False, "device.info has no public_key")
            return
        key = PublicKey(b64url_decode(info.public_key))
        self.found.record("R-INFO-PUBLIC-KEY", True, f"Ed25519 key, thumbprint {key.kid}")
        if self.key is None:
            self.key = key

    # the simulated user ---------------------------------------------------------------------

    async def ask(self, case: str, answer: Decision) -> AgentRequest | None:
        """Direct the device's user to say `case`'s words and answer `answer`; the request it sent."""
        text, since = TEXTS[case], self.obs.now()
        control = ConformanceControl(run_id=self.run_id, action="ask", text=text, answer=answer)
        await self.obs.send(control.encode())
        seen = await self.obs.wait(
            lambda s: isinstance(s.message, AgentRequest) and s.message.text == text,
            self.left(self.settings.step_wait),
            since,
        )
        if seen is None:
            return None
        request: AgentRequest = seen.message
        self.requests[case] = request
        return request

    async def offer(self, offer: ConfirmationRequest) -> float:
        since = self.obs.now()
        await self.obs.send(offer.encode())
        return since

    async def result(self, checkout_id: str, since: float, wait: float) -> Seen | None:
        return await self.obs.wait(
            lambda s: isinstance(s.message, ConfirmationResult) and s.message.checkout_id == checkout_id,
            self.left(wait),
            since,
        )

    async def end(self, offer: ConfirmationRequest, outcome: Outcome) -> None:
        ordered = outcome is Outcome.ORDERED
        result = OrderResult(
            session_id=offer.session_id,
            checkout_id=offer.checkout_id,
            outcome=outcome,
            order_id=new_id("ord") if ordered else None,
            total_minor=offer.proposal.total_minor,
            currency=offer.proposal.currency,
        )
        await self.obs.send(result.encode())

    # sessions -------------------------------------------------------------------------------

    async def _confirmed_session(self) -> bool:
        f, kind = self.found, self.kind or DeviceKind.OTHER
        request = await self.ask("confirm", Decision.CONFIRM)
        if request is None:
            self._why_not = (
                f"the device started no session within {self.settings.step_wait:g} s of a "
                "conformance.control ask: is its test mode allowed?"
            )
            return False
        locale = (self.info.locale if self.info else None) or "en-US"
        problems = [
            p
            for p, bad in (
                (f"names device {request.device_id}", request.device_id != self.device_id),
                (f"locale {request.locale}, device.info says {locale}", request.locale != locale),
            )
            if bad
        ]
        f.record(
            "R-REQUEST-FORM",
            not problems,
            "; ".join(problems)
            or f"agent.request {request.request_id} in session {request.session_id}, locale {request.locale}",
        )
        offer = offer_for(request, kind, self.run_id)
        seen = await self.result(offer.checkout_id, await self.offer(offer), self.settings.step_wait)
        if seen is None:
            why = f"no confirmation.result within {self.settings.step_wait:g} s of the offer"
            for rid in ("R-CONFIRM-BINDING", "R-CONFIRM-DIGEST", "R-MANDATE-SIGNED", "R-IDEMPOTENCY-KEY"):
                f.record(rid, False, why)
            return True
        answer: ConfirmationResult = seen.message
        self._judge_confirmation(offer, answer)
        again = await self.obs.wait(
            lambda s: isinstance(s.message, ConfirmationResult) and s.message.checkout_id == offer.checkout_id,
            self.left(self.settings.quiet + 2),
            seen.at + 0.001,
        )
        if again is None:
            f.record("R-RESEND", False, f"not sent again within {self.settings.quiet + 2:g} s with no order.result")
        else:
            f.record(
                "R-RESEND",
                again.raw == seen.raw,
                f"sent again after {again.at - seen.at:.1f} s, "
                + ("the same bytes" if again.raw == seen.raw else "different bytes"),
            )
        await self.end(offer, Outcome.ORDERED)
        return True

    def _judge_confirmation(self, offer: ConfirmationRequest, answer: ConfirmationResult) -> None:
        f = self.found
        problems = binding_problems(offer, answer)
        if answer.decision is not Decision.CONFIRM:
            problems.insert(0, f"decision {answer.decision.value}, the user confirmed")
        f.record(
            "R-CONFIRM-BINDING",
            not problems,
            "; ".join(problems)
            or f"{answer.decision.value} by {answer.modality.value} for checkout {offer.checkout_id}, hash "
            f"{offer.checkout_hash[:12]}...",
        )
        check = MandateCheck(offer, answer, self.key, self.device_id)
        digest = check.digest_problems()
        f.record(
            "R-CONFIRM-DIGEST",
            not digest,
            "; ".join(digest)
            or f"display digest {answer.display_digest[:12]}... of the {answer.modality.value} presentation",
        )
        f.record(
            "R-MANDATE-SIGNED",
            check.signed_problem is None,
            check.signed_problem or f"EdDSA (Ed25519) mandate verified with key {self.key.kid if self.key else '?'}",
        )
        if check.claims is None:
            why = "no verified mandate to read"
            f.record("R-MANDATE-HASH", None, why)
            f.record("R-MANDATE-TERMS", None, why)
        else:
            hashed, terms = check.hash_problems(), check.terms_problems()
            f.record(
                "R-MANDATE-HASH",
                not hashed,
                "; ".join(hashed)
                or f"binds checkout {offer.checkout_id}, hash {offer.checkout_hash[:12]}..., "
                f"{offer.proposal.total_minor} {offer.proposal.currency} to {offer.proposal.merchant.id}",
            )
            f.record(
                "R-MANDATE-TERMS",
                not terms,
                "; ".join(terms)
                or f"nonce, audience {offer.consent.audience}, handler, device and session as offered, "
                f"lifetime {check.claims.exp - check.claims.iat} s",
            )
        f.record(
            "R-IDEMPOTENCY-KEY",
            answer.idempotency_key is not None,
            f"idempotency_key {answer.idempotency_key}" if answer.idempotency_key else "no idempotency_key",
        )

    async def _declined_session(self) -> None:
        f = self.found
        for payload in GARBAGE:
            await self.obs.send(payload)
        await self.obs.send(
            Error(code=ErrorCode.INTERNAL, text="conformance: an error about nothing", ref="nothing").encode()
        )
        request = await self.ask("decline", Decision.DECLINE)
        if request is None:
            f.record(
                "R-ERROR-SURVIVES",
                False,
                "after unreadable messages and an unknown type on its down topic "
                "the device started no session when asked",
            )
            return
        stale = offer_for(request, self.kind or DeviceKind.OTHER, self.run_id, request_id=new_id("req"))
        self._stale = stale
        await self.offer(stale)
        offer = offer_for(request, self.kind or DeviceKind.OTHER, self.run_id)
        seen = await self.result(offer.checkout_id, await self.offer(offer), self.settings.step_wait)
        if seen is None:
            f.record("R-ERROR-SURVIVES", False, "no answer to the offer after unreadable messages on the down topic")
            f.record("R-DECLINE-NO-MANDATE", False, f"no confirmation.result within {self.settings.step_wait:g} s")
            return
        f.record(
            "R-ERROR-SURVIVES",
            True,
            "after unreadable JSON, an unknown type, a version 99 message and an "
            "error about nothing, the device answered its next offer",
        )
        answer: ConfirmationResult = seen.message
        problems = [
            p
            for p, bad in (
                (f"decision {answer.decision.value}", answer.decision is not Decision.DECLINE),
                ("a mandate came with it", answer.mandate is not None),
            )
            if bad
        ]
        f.record("R-DECLINE-NO-MANDATE", not problems, "; ".join(problems) or "decline, no mandate")
        await self.end(offer, Outcome.DECLINED)

    def _stale_offer_unanswered(self) -> None:
        stale = self._stale
        if stale is None:
            return
        answered = self.obs.find(
            lambda s: isinstance(s.message, ConfirmationResult) and s.message.checkout_id == stale.checkout_id
        )
        self.found.record(
            "R-SESSION-MATCH",
            not answered,
            f"the offer for request {stale.request_id}, never sent, "
            + ("was answered" if answered else "was not answered"),
        )

    async def _unanswered_session(self) -> None:
        request = await self.ask("no_answer", Decision.NO_ANSWER)
        if request is None:
            self.found.record("R-NO-ANSWER-NO-MANDATE", None, "the device started no session when asked")
            return
        offer = offer_for(request, self.kind or DeviceKind.OTHER, self.run_id)
        seen = await self.result(offer.checkout_id, await self.offer(offer), self.settings.quiet)
        if seen is None:
            self.found.record("R-NO-ANSWER-NO-MANDATE", True, f"no answer within {self.settings.quiet:g} s")
        else:
            answer: ConfirmationResult = seen.message
            bad = answer.mandate is not None or answer.decision is Decision.CONFIRM
            self.found.record(
                "R-NO-ANSWER-NO-MANDATE",
                not bad,
                f"answered {answer.decision.value}, " + ("with a mandate" if answer.mandate else "no mandate"),
            )
        await self.end(offer, Outcome.NOT_CONFIRMED)

    async def _refusal(self, case: str) -> None:
        rid = {"tampered": "R-REFUSE-TAMPERED", "expired": "R-REFUSE-EXPIRED"}[case]
        request = await self.ask(case, Decision.CONFIRM)
        if request is None:
            self.found.record(rid, None, "the device started no session when asked")
            return
        offer = offer_for(request, self.kind or DeviceKind.OTHER, self.run_id, expires_in=-60.0)
        what = "expired 60 s ago"
        if case == "tampered":
            offer = tampered(offer_for(request, self.kind or DeviceKind.OTHER, self.run_id))
            what = "with the read-back of a cheaper cart"
        seen = await self.result(offer.checkout_id, await self.offer(offer), self.settings.quiet)
        signed = seen is not None and (seen.message.decision is Decision.CONFIRM or seen.message.mandate is not None)
        self.found.record(
            rid,
            not signed,
            f"an offer {what}, the user saying yes: " + ("confirmed with a mandate" if signed else "not confirmed"),
        )

    async def _error_answer(self) -> None:
        request = await self.ask("error", Decision.CONFIRM)
        if request is None:
            self.found.record("R-ERROR-ENDS-REQUEST", None, "the device started no session when asked")
            return
        error = Error(
            code=ErrorCode.ITEM_NOT_FOUND,
            text="conformance: no such item",
            ref=request.request_id,
            session_id=request.session_id,
        )
        since = self.obs.now()
        await self.obs.send(error.encode())
        again = await self.obs.wait(
            lambda s: isinstance(s.message, AgentRequest) and s.message.request_id == request.request_id,
            self.left(self.settings.quiet),
            since + 0.2,
        )
        self.found.record(
            "R-ERROR-ENDS-REQUEST",
            again is None,
            f"an item_not_found error about {request.request_id}: "
            + ("the request came again" if again else f"not sent again in {self.settings.quiet:g} s"),
        )

    def _session_ids(self) -> None:
        if len(self.requests) < 2:
            return
        sessions = [r.session_id for r in self.requests.values()]
        ids = [r.request_id for r in self.requests.values()]
        fresh = len(set(sessions)) == len(sessions) and len(set(ids)) == len(ids)
        self.found.record(
            "R-SESSION-IDS",
            fresh,
            f"{len(set(sessions))} session ids and {len(set(ids))} request ids in {len(sessions)} sessions",
        )


def _caps(caps: list[Capability]) -> str:
    return ",".join(c.value for c in caps) or "none"
