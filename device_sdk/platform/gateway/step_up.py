"""The gateway's side of a step-up: a device's `step_up` (the PIN its user said or typed for the offer
it is showing) goes to the checkout, which checks it and counts the try; the device gets the proof
(`step_up.result`) or the refusal. The PIN is never logged nor recorded; the audit log says only
whether it was right."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from device_sdk.platform.checkout.backend import CheckoutBackend
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode, SessionError
from device_sdk.protocol.step_up import StepUp, StepUpResult

from .flow import Refuse, Send, SessionKey
from .session import Session, State

log = logging.getLogger(__name__)
KEPT_ANSWERS = 1024


class StepUpDesk:
    """Answers devices' `step_up` messages for the sessions of a `SessionFlow`."""

    def __init__(
        self,
        checkout: CheckoutBackend,
        sessions: dict[SessionKey, Session],
        *,
        send: Send,
        refuse: Refuse,
        timeout: float,
    ) -> None:
        self.checkout = checkout
        self.sessions = sessions
        self.timeout = timeout
        self._send = send
        self._refuse = refuse
        self._answered: OrderedDict[tuple[str, str], StepUpResult | DeviceSdkError] = OrderedDict()
        """The answer to each recent try, by (device, step_up_id): a resend gets it again, uncounted."""

    async def on_step_up(self, device_id: str, message: StepUp) -> None:
        """Check the PIN for the offer the device is showing; answer with the proof or an error."""
        key = (device_id, message.step_up_id)
        answer = self._answered.get(key) or await self._check(device_id, message)
        self._answered[key] = answer
        while len(self._answered) > KEPT_ANSWERS:
            self._answered.popitem(last=False)
        if isinstance(answer, DeviceSdkError):
            self._refuse(device_id, answer, ref=message.checkout_id, session_id=message.session_id)
        else:
            await self._send(device_id, answer)

    async def _check(self, device_id: str, message: StepUp) -> StepUpResult | DeviceSdkError:
        session = self.sessions.get((device_id, message.session_id))
        try:
            offer = session.offer if session is not None else None
            if session is None or offer is None or session.state is not State.AWAITING_CONFIRMATION:
                raise SessionError(
                    f"no offer awaits an answer in session {message.session_id}", ErrorCode.UNKNOWN_CHECKOUT
                )
            if (message.checkout_id, message.checkout_hash) != (offer.checkout_id, offer.checkout_hash):
                raise SessionError("the step-up names another offer", ErrorCode.STALE_CHECKOUT)
            try:
                async with asyncio.timeout(self.timeout):
                    proof, expires_at = await self.checkout.step_up(
                        device_id, message.checkout_id, message.checkout_hash, message.pin
                    )
            except TimeoutError:
                raise DeviceSdkError("the checkout gave no answer to the step-up", ErrorCode.TIMEOUT) from None
        except DeviceSdkError as exc:
            return exc
        except Exception as exc:  # a backend's bug: the device hears of it; no proof
            log.exception("session %s: the step-up failed", message.session_id)
            return DeviceSdkError(f"could not check the PIN: {type(exc).__name__}", ErrorCode.INTERNAL)
        log.info("session %s: %s stepped up", message.session_id, device_id)
        return StepUpResult(
            session_id=message.session_id, checkout_id=message.checkout_id, proof=proof, expires_at=expires_at
        )
