"""What runs on a device: the calls waiting in its sessions and the offers it presented that have not
ended. While either is there the device is busy: it declines a suggestion (`busy`) and says nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from device_sdk.protocol.messages import Error

from .offer import Offer


@dataclass
class Waiter:
    """One call waiting in a session: the message that answers it, or an error about its `ref`."""

    answers: Callable[[Any], bool]
    ref: str
    reply: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def take(self, message: Any) -> bool:
        mine = self.answers(message) or (isinstance(message, Error) and message.ref == self.ref)
        if mine and not self.reply.done():
            self.reply.set_result(message)
        return mine


def running(waiting: Mapping[str, list[Waiter]], presented: dict[str, Offer], now: float | None = None) -> bool:
    """Whether a session runs: a call waits for its reply (a request in flight, a result awaited) or an
    offer is presented and awaits its answer. An offer past its expiry has ended and is dropped."""
    now = time.time() if now is None else now
    for checkout_id in [c for c, offer in presented.items() if offer.request.expires_at <= now]:
        del presented[checkout_id]
    return any(waiting.values()) or bool(presented)
