"""What a gateway's memory does not hold, answered from the checkout's store.

Sessions live in the memory of the gateway that serves them; the outcome of a checkout lives in the
checkout's store from the moment its confirmation is admitted (`checkout/outcomes.py`). So any
gateway, a restarted one or one that took the device over, answers a device's `order.status`, and a
resent confirmation of a session it never saw, from the store: never `unknown_checkout` for a
checkout that ordered, never a second order. Completions admitted but never given a result (the
gateway died between the mark and the merchant's answer) are settled when the gateway starts and
by a periodic sweep, asking the merchant again under the same completion key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from device_sdk.platform.checkout.backend import CheckoutBackend, Completion, new_idempotency_key
from device_sdk.protocol.errors import CheckoutError, DeviceSdkError, ErrorCode
from device_sdk.protocol.fields import Decision, Outcome, WireMessage
from device_sdk.protocol.messages import ConfirmationResult, OrderResult, OrderStatus

from .flow import Refuse

log = logging.getLogger(__name__)

SETTLE_AFTER = 30.0
"""Seconds a completion may stay pending before the sweep asks the merchant again (at start: at once)."""
SETTLE_EVERY = 15.0


class Recovery:
    """Answers from the store what no session in memory answers, and settles pending completions."""

    def __init__(
        self,
        checkout: CheckoutBackend,
        *,
        send: Callable[[str, WireMessage], Awaitable[None]],
        refuse: Refuse,
        record: Callable[..., Awaitable[None]],
        checkout_timeout: float,
        settle_after: float = SETTLE_AFTER,
        every: float = SETTLE_EVERY,
    ) -> None:
        self.checkout = checkout
        self.checkout_timeout = checkout_timeout
        self.settle_after = settle_after
        self.every = every
        self.settled = 0
        """Completions this gateway settled after a crash left them pending."""
        self._send = send
        self._refuse = refuse
        self._record = record

    async def on_status(self, device_id: str, ask: OrderStatus) -> None:
        """Answer `order.status` with how the checkout stands in the store (its device's, or the
        phone's it was handed to; anyone else's is `unknown_checkout`)."""
        try:
            status = await self._call(self.checkout.status(device_id, ask.session_id, ask.checkout_id))
        except DeviceSdkError as exc:
            self._refuse(device_id, exc, ref=ask.checkout_id, session_id=ask.session_id)
            return
        await self._send(device_id, status)

    async def on_confirmation(self, device_id: str, answer: ConfirmationResult) -> None:
        """A confirmation of a session this gateway does not hold: the stored result if the checkout
        ended; a pending completion settled first (the merchant asked again under its completion
        key: the same order, never a second); an open checkout completed under the device's
        idempotency key, or cancelled by a decline."""
        ids = {"device_id": device_id, "session_id": answer.session_id, "checkout_id": answer.checkout_id}
        try:
            status = await self._call(self.checkout.status(device_id, answer.session_id, answer.checkout_id))
            if status.state == "pending":
                self.settled += await self._call(self.checkout.settle_pending(0.0))
                status = await self._call(self.checkout.status(device_id, answer.session_id, answer.checkout_id))
            if status.state == "pending":
                raise DeviceSdkError("the order is being placed; ask again", ErrorCode.INTERNAL)
            result = status.result or await self._finish(device_id, answer)
        except DeviceSdkError as exc:
            self._refuse(device_id, exc, ref=answer.checkout_id, session_id=answer.session_id)
            return
        await self._record("result", **ids, outcome=result.outcome.value, order_id=result.order_id,
                           reason=result.reason, recovered=status.state)  # fmt: skip
        log.info("session %s: %s, from the store (%s)", answer.session_id, result.outcome, status.state)
        await self._send(device_id, result)

    async def _finish(self, device_id: str, answer: ConfirmationResult) -> OrderResult:
        """The answer to an open checkout: its completion, or its cancellation."""
        if answer.decision is not Decision.CONFIRM:
            outcome = Outcome.DECLINED if answer.decision is Decision.DECLINE else Outcome.NOT_CONFIRMED
            reason = "the user declined on the device" if outcome is Outcome.DECLINED else "no confirmation"
            await self._call(self.checkout.cancel(answer.checkout_id, outcome, reason))
            return OrderResult(session_id=answer.session_id, checkout_id=answer.checkout_id, outcome=outcome,
                               reason=reason)  # fmt: skip
        completion = Completion(
            checkout_id=answer.checkout_id,
            checkout_hash=answer.checkout_hash,
            device_id=device_id,
            session_id=answer.session_id,
            confirmation=answer,
            idempotency_key=answer.idempotency_key or new_idempotency_key(),
        )
        try:
            result: OrderResult = await self._call(self.checkout.complete(completion))
        except CheckoutError as exc:
            return OrderResult(session_id=answer.session_id, checkout_id=answer.checkout_id,
                               outcome=Outcome(exc.outcome), reason=f"{exc.code}: {exc.text}")  # fmt: skip
        return result

    async def _call(self, call: Awaitable[Any]) -> Any:
        """A call to the checkout within its timeout; no answer is `internal` (the device asks again)."""
        try:
            async with asyncio.timeout(self.checkout_timeout):
                return await call
        except DeviceSdkError:
            raise
        except Exception as exc:
            log.warning("the checkout gave no answer: %r", exc)
            raise DeviceSdkError("the checkout gave no answer yet; ask again", ErrorCode.INTERNAL) from None

    async def run(self) -> None:
        """Settle every pending completion now (a crash may have left some), then every `every`
        seconds those pending for over `settle_after` seconds."""
        older_than = 0.0
        while True:
            try:
                settled = await self._call(self.checkout.settle_pending(older_than))
            except DeviceSdkError as exc:
                log.warning("could not settle pending completions: %s", exc)
            else:
                self.settled += settled
                if settled:
                    log.info("settled %d completion(s) a crash left pending", settled)
            older_than = self.settle_after
            await asyncio.sleep(self.every)
