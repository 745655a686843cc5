"""The session flow on the gateway: a device's agent request becomes a proposal on offer, the device's
confirmation of exactly that offer completes the checkout, and the session ends with one order
result, every step recorded in the audit log before the device hears of it.

A device whose own modality cannot get an answer (a voice that did not hear it twice) may hand the
offer to the phone paired with it at provisioning (`handover`): the checkout records the hand-over
and from then on takes only that phone's `phone_sheet` mandate; the phone gets the offer, and both
devices get the session's result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Protocol

from device_sdk.consent.readback import confirmation_request
from device_sdk.platform.agent import RemoteAgent
from device_sdk.platform.checkout.audit import AuditLog
from device_sdk.platform.checkout.backend import CheckoutBackend, Completion
from device_sdk.protocol.errors import CheckoutError, DeviceSdkError, ErrorCode, SessionError
from device_sdk.protocol.fields import Decision, Outcome, WireMessage, new_id, now, sha256_hex
from device_sdk.protocol.messages import (
    AgentRequest,
    ConfirmationResult,
    HandedOver,
    HandOver,
    IssuedProposal,
    OrderResult,
)

from .cancels import Cancels
from .deadlines import Deadlines
from .session import Session, State, Step

log = logging.getLogger(__name__)

SessionKey = tuple[str, str]
"""(device_id, session_id): session ids are the device's own, so they are unique per device."""
Send = Callable[[str, WireMessage], Awaitable[None]]
"""Sends a message down to a device."""
InSession = Callable[[SessionKey, Coroutine[Any, Any, None]], None]
"""Runs a coroutine after every earlier handler of the same session."""
Observe = Callable[[str, SessionKey, dict[str, Any]], None]
"""Hears of a step of a session: `request`, and each audit record's kind with its fields."""


class Refuse(Protocol):
    """Answers a message with an `error` to its device (or on the errors topic when none is known)."""

    def __call__(
        self, device_id: str | None, exc: DeviceSdkError, *, ref: str | None = None, session_id: str | None = None
    ) -> None: ...


class SessionFlow:
    """Takes each device session from its agent request to its order result, through the confirmation gate."""

    def __init__(
        self,
        checkout: CheckoutBackend,
        *,
        audit: AuditLog | None,
        send: Send,
        refuse: Refuse,
        in_session: InSession,
        confirm_timeout: float,
        checkout_timeout: float,
        keep_ended: float,
        retry_after: float = 2.0,
    ) -> None:
        self.checkout = checkout
        self.audit = audit
        self.agent: RemoteAgent | None = None
        """The client of the agent core; the gateway sets it once its bus is up."""
        self.confirm_timeout = confirm_timeout
        self.checkout_timeout = checkout_timeout
        self.keep_ended = keep_ended
        self.retry_after = retry_after
        self.sessions: dict[SessionKey, Session] = {}
        self.ended = 0
        """How many of `sessions` have ended (kept a while to answer a resend again)."""
        self.deadlines: Deadlines[SessionKey] = Deadlines()
        """When each session next needs looking at (`sweep`)."""
        self._of_device: dict[str, set[SessionKey]] = {}
        self.observe: Observe | None = None
        """Hears of each step of a session (the service's metrics)."""
        self._send = send
        self._refuse = refuse
        self._in_session = in_session
        self._handed: dict[SessionKey, SessionKey] = {}
        """(phone, session id) of each offer handed over: the session's own key."""
        self._sweeping: set[SessionKey] = set()
        self.cancels = Cancels(checkout, lambda: self.checkout_timeout)
        """Cancels of declined, expired and superseded offers, including those still going on."""

    # a device's messages -----------------------------------------------------------------

    async def on_request(self, device_id: str, request: AgentRequest) -> None:
        """Answer an agent request with the agent's proposal as an offer (a repeat gets the same answer)."""
        key = (device_id, request.session_id)
        session = self.sessions.get(key)
        if session is None:
            session = self.hold(Session(request.session_id, device_id))
        superseded = session.offer if session.state is State.AWAITING_CONFIRMATION else None
        try:
            step = session.on_request(device_id, request.request_id)
        except SessionError as exc:
            self._refuse(device_id, exc, ref=request.request_id, session_id=request.session_id)
            return
        if step is Step.RESEND_OFFER and session.offer is not None:
            await self._send(device_id, session.offer)
            return
        if step is Step.RESEND_RESULT and session.result is not None:
            await self._send(device_id, session.result)
            return
        if step is not Step.ASK_AGENT:
            return
        if superseded is not None:
            await self.cancels.close(superseded.checkout_id, Outcome.NOT_CONFIRMED, "superseded by a new request")
        log.info("session %s: %s asks %r", request.session_id, device_id, request.text)
        self._observed("request", key)
        issued: IssuedProposal | None = None
        try:
            issued = await self._ask_agent(device_id, request)
            await self.record(
                "proposal",
                session=session,
                checkout_id=issued.proposal.checkout_id,
                checkout_hash=issued.checkout_hash,
                request=request.text,
                lines=[[line.sku, line.qty, line.line_total_minor] for line in issued.proposal.lines],
                total_minor=issued.proposal.total_minor,
                currency=issued.proposal.currency,
                payee=issued.proposal.merchant.id,
                locale=issued.proposal.language,
            )
            terms = await self.checkout.open(issued)
            offer = confirmation_request(
                issued.proposal, issued.checkout_hash, request.request_id, terms, now() + self.confirm_timeout
            )
        except Exception as exc:
            session.on_agent_failed(request.request_id)
            self.deadlines.at(session.touched + self.keep_ended, key)
            if issued is not None:
                await self.cancels.close(issued.proposal.checkout_id, Outcome.NOT_CONFIRMED, "not offered")
            if isinstance(exc, DeviceSdkError):
                refusal = exc
            else:
                log.exception("session %s: no offer", request.session_id)
                refusal = DeviceSdkError(f"could not make an offer: {type(exc).__name__}", ErrorCode.INTERNAL)
            self._refuse(device_id, refusal, ref=request.request_id, session_id=request.session_id)
            return
        if session.on_offer(request.request_id, issued, offer):
            self.deadlines.at(time.monotonic() + max(offer.expires_at - now(), 0.0), key)
            await self.record(
                "rendering",
                session=session,
                checkout_id=offer.checkout_id,
                text=offer.readback,
                display_digest=offer.display_digest,
                modalities=[m.value for m in offer.consent.modalities],
            )
            await self._send(device_id, offer)

    async def _ask_agent(self, device_id: str, request: AgentRequest) -> IssuedProposal:
        """Ask the agent under a request id of the gateway's own, so devices' ids never collide."""
        assert self.agent is not None
        issued = await self.agent.propose(request.model_copy(update={"request_id": new_id("ar")}))
        proposal = issued.proposal
        if (proposal.device_id, proposal.session_id) != (device_id, request.session_id):
            raise CheckoutError("the agent proposed for another device or session", ErrorCode.BAD_PROPOSAL)
        return issued

    def holds(self, key: SessionKey, checkout_id: str) -> bool:
        """Whether a session here offered `checkout_id`. A confirmation of a checkout it never offered
        is another gateway's: two gateways served the device at once (a broker cluster may deliver two
        claims in different orders on different nodes) and the store answers it (`recovery.py`), as
        after a take-over; refused `stale_checkout` here, the device heard a refusal for an order
        the other gateway placed (the fleet bench on NATS: 19 of 976)."""
        session = self.sessions.get(key)
        return session is not None and checkout_id in session.offered

    def awaits_answer(self, device_id: str, message: Any) -> bool:
        """Whether `message` answers the offer a session here awaits: a confirmation of its checkout."""
        if getattr(message, "type", None) != "confirmation.result":
            return False
        session = self.sessions.get(self.session_key(device_id, message.session_id))
        return (session is not None and session.state is State.AWAITING_CONFIRMATION and session.offer is not None
                and session.offer.checkout_id == message.checkout_id)  # fmt: skip

    def session_key(self, device_id: str, session_id: str) -> SessionKey:
        """The key a device's message runs under: the session's own, for a phone it was handed to."""
        key = (device_id, session_id)
        return self._handed.get(key, key)

    async def on_hand_over(self, device_id: str, message: HandOver) -> None:
        """Hand the device's offer to its paired phone: the checkout records it and issues the
        `phone_sheet` terms; the phone gets the offer, the device `handed_over` (again: the same)."""
        session = self.sessions.get((device_id, message.session_id))
        try:
            if session is None:
                raise SessionError(f"this device has no session {message.session_id}", ErrorCode.UNKNOWN_CHECKOUT)
            if session.on_hand_over(device_id, message.checkout_id) is Step.HAND_OVER:
                await self._hand_over(session, message)
        except DeviceSdkError as exc:
            self._refuse(device_id, exc, ref=message.checkout_id, session_id=message.session_id)
            return
        phone, offer = session.handed_to, session.offer
        if phone is None or offer is None:
            return
        log.info("session %s: %s handed its offer to %s", session.session_id, device_id, phone)
        await self._send(phone, offer)
        await self._send(device_id, HandedOver(session_id=session.session_id, checkout_id=offer.checkout_id,
                                               to_device=phone))  # fmt: skip

    async def _hand_over(self, session: Session, message: HandOver) -> None:
        assert session.offer is not None
        if message.checkout_hash != session.offer.checkout_hash:
            raise SessionError("the hand-over names another version of the cart", ErrorCode.HASH_MISMATCH)
        try:
            async with asyncio.timeout(self.checkout_timeout):
                phone, terms = await self.checkout.hand_over(message.checkout_id, session.device_id)
        except TimeoutError:
            raise DeviceSdkError("the checkout gave no answer to the hand-over", ErrorCode.TIMEOUT) from None
        except DeviceSdkError:
            raise
        except Exception as exc:  # a backend's bug: the device hears of it, the offer stays its own
            log.exception("session %s: the hand-over failed", session.session_id)
            raise DeviceSdkError(f"could not hand the offer over: {type(exc).__name__}", ErrorCode.INTERNAL) from None
        session.handed_to = phone
        session.offer = session.offer.model_copy(update={"consent": terms, "handed_over_from": session.device_id})
        self._handed[(phone, session.session_id)] = (session.device_id, session.session_id)

    async def on_confirmation(self, device_id: str, answer: ConfirmationResult) -> None:
        """Complete or cancel the checkout on the device's answer to the offer it was shown, else refuse it."""
        session = self.sessions.get(self.session_key(device_id, answer.session_id))
        try:
            if session is None:
                raise SessionError(f"this device has no session {answer.session_id}", ErrorCode.UNKNOWN_CHECKOUT)
            step = session.on_confirmation(device_id, answer, now())
        except SessionError as exc:
            await self.record(
                "refusal",
                device_id=device_id,
                session_id=answer.session_id,
                checkout_id=answer.checkout_id,
                stage="confirmation",
                code=exc.code.value,
                reason=exc.text,
            )
            self._refuse(device_id, exc, ref=answer.checkout_id, session_id=answer.session_id)
            return
        if step in (Step.COMPLETE, Step.CANCEL):
            retry = step is Step.COMPLETE and session.confirmed is not answer
            await self.record(
                "confirmation",
                session=session,
                checkout_id=answer.checkout_id,
                completes="the first confirmation, whose completion got no answer" if retry else None,
                decision=answer.decision.value,
                modality=answer.modality.value,
                display_digest=answer.display_digest,
                heard=answer.heard,
                declined_for=answer.declined_for if answer.decision is Decision.DECLINE else None,
                mandate_sha256=sha256_hex(answer.mandate) if answer.mandate else None,
            )
        if step is Step.RESEND_RESULT and session.result is not None:
            await self._send(device_id, session.result)
            return
        if step is Step.IGNORE or session.offer is None:
            return
        offer = session.offer
        result: OrderResult | None
        if step is Step.COMPLETE:
            result = await self._complete(session)
            if result is None:
                return
        elif answer.decision is Decision.DECLINE and now() <= offer.expires_at:
            refused = answer.declined_for and f"{answer.declined_for}: refused by the device's own policy"
            result = await self._cancel(session, Outcome.DECLINED, refused or "the user declined on the device")
        else:
            reason = "no confirmation from the user" if now() <= offer.expires_at else "the confirmation expired"
            result = await self._cancel(session, Outcome.NOT_CONFIRMED, reason)
        await self._end(session, result)
        log.info("session %s: %s", session.session_id, result.outcome)
        await self._tell(session, result)

    # the checkout ------------------------------------------------------------------------

    async def _complete(self, session: Session, attempts: int = 3) -> OrderResult | None:
        """Complete with the session's confirmation, retrying a checkout that gives no answer under the
        same idempotency key; None when it still gave none (the session waits for the next try)."""
        assert session.offer is not None
        assert session.confirmed is not None
        completion = Completion(
            checkout_id=session.offer.checkout_id,
            checkout_hash=session.offer.checkout_hash,
            device_id=session.device_id,
            session_id=session.session_id,
            confirmation=session.confirmed,
            idempotency_key=session.idempotency_key,
        )
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(self.checkout_timeout):
                    return await self.checkout.complete(completion)
            except CheckoutError as exc:
                return OrderResult(
                    session_id=completion.session_id,
                    checkout_id=completion.checkout_id,
                    outcome=Outcome(exc.outcome),
                    reason=f"{exc.code}: {exc.text}",
                )
            except Exception as exc:
                log.warning(
                    "session %s: the checkout gave no answer (%r), try %d", session.session_id, exc, attempt + 1
                )
                if attempt + 1 < attempts:
                    await asyncio.sleep(0.2 * 2**attempt)
        session.on_complete_failed()
        self.deadlines.at(session.retry_at(self.retry_after), (session.device_id, session.session_id))
        error = DeviceSdkError("the checkout gave no answer yet; the order is being retried", ErrorCode.INTERNAL)
        self._refuse(session.device_id, error, ref=completion.checkout_id, session_id=session.session_id)
        return None

    async def _retry(self, session: Session) -> None:
        """The sweeper's retry of a completion that got no answer."""
        if not session.needs_retry(time.monotonic(), 0.0):
            return
        session.state = State.COMPLETING
        result = await self._complete(session)
        if result is not None:
            await self._end(session, result)
            log.info("session %s: %s (after a retry)", session.session_id, result.outcome)
            await self._tell(session, result)

    async def _cancel(self, session: Session, outcome: Outcome, reason: str) -> OrderResult:
        assert session.offer is not None
        await self.cancels.close(session.offer.checkout_id, outcome, reason)
        return OrderResult(session_id=session.session_id, checkout_id=session.offer.checkout_id, outcome=outcome,
                           reason=reason)  # fmt: skip

    async def _end(self, session: Session, result: OrderResult) -> None:
        """End the session with `result`, recorded in the audit log before the device is told."""
        if session.state is not State.ENDED:
            self.ended += 1
        session.end(result)
        self.deadlines.at(session.touched + self.keep_ended, (session.device_id, session.session_id))
        await self.record(
            "result",
            session=session,
            checkout_id=result.checkout_id,
            outcome=result.outcome.value,
            order_id=result.order_id,
            reason=result.reason,
        )

    async def _tell(self, session: Session, result: OrderResult) -> None:
        """The session's result, to its device and to the phone it handed the offer to."""
        await self._send(session.device_id, result)
        if session.handed_to is not None:
            await self._send(session.handed_to, result)

    async def record(self, kind: str, *, session: Session | None = None, **fields: Any) -> None:
        """Record a step of a session in the audit log, when the gateway keeps one."""
        if session is not None:
            fields.update(device_id=session.device_id, session_id=session.session_id)
        self._observed(kind, (fields.get("device_id", ""), fields.get("session_id", "")), fields)
        if self.audit is None:
            return
        try:
            await self.audit.record(kind, **fields)
        except Exception as exc:
            log.error("could not write the audit record %s: %r", kind, exc)

    def hold(self, session: Session) -> Session:
        """Hold a new session here, indexed by its key and by its device."""
        key = (session.device_id, session.session_id)
        self.sessions[key] = session
        self._of_device.setdefault(session.device_id, set()).add(key)
        return session

    def _observed(self, kind: str, key: SessionKey, fields: dict[str, Any] | None = None) -> None:
        if self.observe is not None:
            try:
                self.observe(kind, key, fields or {})
            except Exception:
                log.exception("the observer of %s failed", kind)

    @property
    def open_sessions(self) -> int:
        """Sessions held here that have not ended."""
        return len(self.sessions) - self.ended

    # housekeeping ------------------------------------------------------------------------

    async def _expire(self, session: Session, reason: str) -> None:
        if session.state is not State.AWAITING_CONFIRMATION or session.confirmed is not None:
            return  # answered meanwhile, or a confirmation whose completion is being retried
        result = await self._cancel(session, Outcome.NOT_CONFIRMED, reason)
        await self._end(session, result)
        log.info("session %s: not_confirmed (%s)", session.session_id, reason)
        await self._tell(session, result)

    def hand_over(self, device_id: str) -> None:
        """Another gateway took over the device: end its sessions that await an answer, unconfirmed."""
        for key in list(self._of_device.get(device_id, ())):
            session = self.sessions[key]
            if session.state is State.AWAITING_CONFIRMATION:
                self._sweep_task(key, self._expire(session, "another gateway took over the device"))

    def _sweep_task(self, key: SessionKey, coro: Coroutine[Any, Any, None]) -> None:
        """Queue one housekeeping task per session at a time."""
        if key in self._sweeping:
            coro.close()
            return
        self._sweeping.add(key)

        async def run() -> None:
            try:
                await coro
            finally:
                self._sweeping.discard(key)

        self._in_session(key, run())

    def sweep(self, t: float, mono: float, gone: Iterable[str] = ()) -> None:
        """Look at the sessions due by `mono` (popped from `deadlines`) and at those of the devices
        `gone` offline past their grace: expire offers past their time or whose device is gone, retry
        unanswered completions, and forget sessions idle or ended for `keep_ended` seconds."""
        for device_id in gone:
            for key in list(self._of_device.get(device_id, ())):
                held = self.sessions[key]
                if held.state is State.AWAITING_CONFIRMATION and held.confirmed is None:
                    self._sweep_task(key, self._expire(held, "the device went offline"))
        for key in self.deadlines.due(mono):
            session = self.sessions.get(key)
            if session is None:
                continue
            if session.expired(t):
                self._sweep_task(key, self._expire(session, "the confirmation expired"))
            elif session.needs_retry(mono, self.retry_after):
                self._sweep_task(key, self._retry(session))
            elif session.state is State.AWAITING_CONFIRMATION and session.confirmed is None and session.offer:
                self.deadlines.at(mono + max(session.offer.expires_at - t, 0.05), key)  # the wall clock lags
            elif session.state in (State.IDLE, State.ENDED) and mono - session.touched >= self.keep_ended:
                self._forget(key)

    def _forget(self, key: SessionKey) -> None:
        session = self.sessions.pop(key, None)
        if session is None:
            return
        if session.state is State.ENDED:
            self.ended -= 1
        keys = self._of_device.get(session.device_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._of_device[session.device_id]
        if session.handed_to is not None:
            self._handed.pop((session.handed_to, session.session_id), None)
