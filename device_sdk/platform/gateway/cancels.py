"""Closing a checkout without an order: the cancel that a decline, an expired offer or a superseded
one asks of the checkout.

The device hears its decline at once; its checkout must still close with a cancel record, or it
stays open until its terms expire. So a cancel slower than the checkout's timeout is not abandoned
(it goes on in the background), one the store lost (a database restarting: its batch in flight was
lost) is asked again, and a stopping gateway waits for the ones still going on (`finish`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from device_sdk.platform.checkout.backend import CheckoutBackend
from device_sdk.protocol.errors import StoreError
from device_sdk.protocol.fields import Outcome

log = logging.getLogger(__name__)


class Cancels:
    """The cancels a gateway asks for, and the ones still going on after their device was told."""

    def __init__(self, checkout: CheckoutBackend, timeout: Callable[[], float], *, within: float = 300.0) -> None:
        self.checkout = checkout
        self._timeout = timeout
        """How long a caller waits for its cancel before it goes on in the background."""
        self.within = within
        """How long a cancel the store lost is asked again: every 0.5 s, doubling to 8 s."""
        self._going_on: set[asyncio.Future[None]] = set()

    async def close(self, checkout_id: str, outcome: Outcome, reason: str) -> None:
        """Cancel; wait for it up to the timeout, then let it go on in the background."""
        closing = asyncio.ensure_future(self._until_stored(checkout_id, outcome, reason))
        try:
            async with asyncio.timeout(self._timeout()):
                await asyncio.shield(closing)
        except TimeoutError:
            log.warning("checkout %s: the cancel is slow; it goes on", checkout_id)
            self._going_on.add(closing)
            closing.add_done_callback(self._done)
        except Exception as exc:
            log.warning("could not cancel checkout %s: %r", checkout_id, exc)

    async def finish(self, timeout: float) -> None:
        """Wait up to `timeout` seconds for the cancels still going on (a stopping gateway dropped them,
        and the checkouts of declines their devices had heard stayed open)."""
        if self._going_on:
            await asyncio.wait(set(self._going_on), timeout=timeout)

    async def _until_stored(self, checkout_id: str, outcome: Outcome, reason: str) -> None:
        wait, until = 0.5, time.monotonic() + self.within
        while True:
            try:
                return await self.checkout.cancel(checkout_id, outcome, reason)
            except StoreError as exc:
                if time.monotonic() + wait > until:
                    raise
                log.warning("checkout %s: the cancel was not stored (%s); again in %.1f s", checkout_id, exc, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 8.0)

    def _done(self, closing: asyncio.Future[None]) -> None:
        self._going_on.discard(closing)
        if not closing.cancelled() and (exc := closing.exception()) is not None:
            log.warning("could not cancel a checkout: %r", exc)
