"""Admission: a gateway past its capacity refuses new sessions with `busy` instead of queueing them.

An overloaded gateway used to take every request and queue it: offered 200 requests/s, one gateway
answered 103/s and its proposals took 9 to 13 s (docs/scale.md, run g); every device waited and no
one was told why. Capacity shows in two places, both read without walking anything:

- the event loop's lag: a timer that asks to sleep `every` seconds and is woken late by the work
  queued before it, smoothed over the last samples (an exponential average), so that a backlog that
  lasts closes the door and a lone pause (a garbage collection, a slow disk write) does not: the
  requests that waited through a pause are served, not refused for it;
- the sessions with work under way (a request with the agent, a checkout being completed), a
  count the gateway keeps per handler: past `max_active` the gateway holds more half-done work than
  it should, whatever the loop says (a slow agent or store).

Only a new session is refused: a confirmation, a hand-over, a step-up or an order-status query of a
session already here is always served, so what a user confirmed is never dropped for load. The
device hears `busy` ("ask again shortly") at once, and a refusal costs a small fraction of the
session it declines, so the loop catches up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from device_sdk.protocol.errors import ConfigError, ErrorCode, SessionError


@dataclass(frozen=True)
class Capacity:
    """When a gateway stops taking new sessions."""

    max_lag: float = 0.25
    """Seconds the event loop may fall behind before new sessions are refused (a session costs a few
    milliseconds of the loop, so a quarter second is dozens of sessions queued ahead)."""
    max_active: int = 512
    """Sessions with work under way at once (a request with the agent, a checkout completing)."""
    every: float = 0.05
    """How often the loop's lag is sampled."""
    smoothing: float = 0.8
    """The weight of the average so far against each new sample: a lone 0.3 s pause moves it by 0.06 s,
    a lag that lasts reaches it within a few samples."""

    def __post_init__(self) -> None:
        if not (self.max_lag > 0 and self.max_active > 0 and self.every > 0 and 0 <= self.smoothing < 1):
            raise ConfigError(f"bad gateway capacity {self}: max_lag, max_active, every > 0 and 0 <= smoothing < 1")


class Admission:
    """Measures the loop's lag (`run`, one task) and says whether a new session may start."""

    def __init__(self, capacity: Capacity | None = None) -> None:
        self.capacity = capacity or Capacity()
        self.lag = 0.0
        """The loop's lag in seconds, averaged over the last samples."""
        self.refused = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        every, keep = self.capacity.every, self.capacity.smoothing
        while True:
            asked = loop.time()
            await asyncio.sleep(every)
            late = max(0.0, loop.time() - asked - every)
            self.lag = keep * self.lag + (1 - keep) * late

    def check(self, active: int) -> None:
        """Raise `busy` when a new session would start past capacity; `active`: sessions under way."""
        c = self.capacity
        if self.lag > c.max_lag:
            self.refused += 1
            raise SessionError(
                f"this gateway is at capacity (its work is {self.lag:.2f} s behind): ask again shortly", ErrorCode.BUSY
            )
        if active >= c.max_active:
            self.refused += 1
            raise SessionError(
                f"this gateway is at capacity ({active} sessions under way): ask again shortly", ErrorCode.BUSY
            )
