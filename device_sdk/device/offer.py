"""An offer on the device: the proposal to present with the SDK's read-back, the idempotency key
the device keeps for its answer, and the answers it sent.

An answer is sent once and then resent as it was (the same bytes, the same mandate, the same key),
so every retry of it, through any gateway, is the same completion: the checkout gives it the same
result and never a second order. When no result comes, the device asks how the checkout stands
(`order.status`), and takes the stored result as its own.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from device_sdk.consent.readback import compose_readback, display_digest
from device_sdk.protocol.errors import ErrorCode, ProtocolError, RequestTimeout
from device_sdk.protocol.messages import ConfirmationRequest, ConfirmationResult, OrderResult, OrderStatusResult


def new_idempotency_key() -> str:
    """128 random bits, as the checkout requires of an idempotency key."""
    return f"idem_{secrets.token_hex(16)}"


@dataclass(frozen=True)
class Offer:
    """A proposal to present to the user, with the SDK's read-back of it."""

    request: ConfirmationRequest
    idempotency_key: str = field(default_factory=new_idempotency_key, compare=False)
    """The seed of each device's key for its answer to this offer (`key_for`)."""
    sent: dict[Hashable, ConfirmationResult] = field(default_factory=dict, compare=False, repr=False)
    """The answers sent, by device and what they were made of: a retry resends the same one."""

    @classmethod
    def checked(cls, request: ConfirmationRequest) -> Offer:
        """The offer, once its read-back is the SDK's own for its proposal and it has not expired (else
        `ProtocolError`): a device never shows, let alone signs, anything else."""
        composed = compose_readback(request.proposal)
        if composed != request.readback or display_digest(composed) != request.display_digest:
            raise ProtocolError("the read-back does not match the proposal it came with", ErrorCode.DISPLAY_MISMATCH)
        if request.expires_at <= time.time():
            raise ProtocolError(f"the offer of checkout {request.checkout_id} has expired", ErrorCode.CHECKOUT_CLOSED)
        return cls(request)

    @property
    def readback(self) -> str:
        return self.request.readback

    @property
    def session_id(self) -> str:
        return self.request.session_id

    def digest(self, presented: str | None = None) -> str:
        """The display digest of what the device presented (by default, the SDK's read-back)."""
        return display_digest(presented if presented is not None else self.request.readback)

    def key_for(self, device_id: str) -> str:
        """The idempotency key that `device_id`'s answers to this offer carry, every retry alike."""
        return f"idem_{hashlib.sha256(f'{self.idempotency_key}:{device_id}'.encode()).hexdigest()[:32]}"

    def answer(self, device_id: str, made_of: Hashable, make: Callable[[], ConfirmationResult]) -> ConfirmationResult:
        """`device_id`'s answer made of `made_of` as it was first sent (`make` makes it the first
        time), with the device's idempotency key for this offer."""
        answer = self.sent.get((device_id, made_of))
        if answer is None:
            answer = make().model_copy(update={"idempotency_key": self.key_for(device_id)})
            self.sent[(device_id, made_of)] = answer
        return answer


async def outcome(
    send: Callable[[ConfirmationResult, float], Awaitable[OrderResult]],
    status: Callable[[float], Awaitable[OrderStatusResult]],
    answer: ConfirmationResult,
    timeout: float,
    ask_for: float,
) -> OrderResult:
    """Send `answer` (resent until answered) for `timeout` seconds; with no result by then, ask how
    the checkout stands for up to `ask_for` seconds and take the stored result. Still none (the
    checkout is open or its order is being placed): `RequestTimeout`, and answering again resends
    the same answer."""
    try:
        return await send(answer, timeout)
    except RequestTimeout:
        try:
            stood = await status(ask_for)
        except RequestTimeout:
            raise RequestTimeout(f"no result in session {answer.session_id} within {timeout} s") from None
        if stood.result is None:
            raise RequestTimeout(f"checkout {answer.checkout_id} is {stood.state}: answer again") from None
        return stood.result
