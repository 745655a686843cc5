"""Wake-word arbitration: when several devices of one room hear the same wake word, one session opens.

The first `wake` of a room opens a round of `window` seconds (300 ms by default); every wake of
that room that arrives within the round contends. When the round closes, the contenders whose
wake-word confidence is within `margin` (0.1) of the best are the candidates: detectors' scores
for one utterance differ by a few hundredths from device to device, so a closer score says little,
while a clearly lower one says the device may not have heard the wake word at all. Of the
candidates the loudest wins (audio energy in dBFS: the device nearest the speaker), then the
lowest device id, so the choice is the same whatever order the wakes came in. The winner's
session opens; every other contender is told who won and goes back to listening.
A wake that arrives after its room's round closed opens a round of its own: a window is a bound on
how far apart two hearings of one utterance may be, not a way to merge two utterances.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from device_sdk.protocol.messages import MAX_WAKE_WINDOW, Wake, WakeResult

DEFAULT_WINDOW = 0.3
"""Seconds from a room's first wake during which other wakes in that room contend with it."""
DEFAULT_MARGIN = 0.1
"""Confidences within this of the best count as equal; the loudest of those wins."""


@dataclass(frozen=True)
class Contender:
    """One device's wake in a round."""

    device_id: str
    wake: Wake

    def result(self, *, granted: bool, winner: str) -> WakeResult:
        return WakeResult(wake_id=self.wake.wake_id, session_id=self.wake.session_id, granted=granted, winner=winner)


@dataclass
class Round:
    """The wakes of one room within one window."""

    room: str | None
    opened_at: float
    margin: float = DEFAULT_MARGIN
    contenders: list[Contender] = field(default_factory=list)
    again: list[Contender] = field(default_factory=list)
    """Later wakes of a device already contending (another wake id): answered, never granted."""

    def winner(self) -> Contender:
        """The loudest of those about as confident as the best, then the lowest device id."""
        best = max(c.wake.confidence for c in self.contenders)
        candidates = [c for c in self.contenders if c.wake.confidence >= best - self.margin]
        return min(candidates, key=lambda c: (-c.wake.energy_db, c.device_id))

    def results(self) -> list[tuple[str, WakeResult]]:
        """`(device_id, wake.result)` for every contender: one granted, the others not."""
        won = self.winner()
        return [
            (c.device_id, c.result(granted=c is won, winner=won.device_id)) for c in [*self.contenders, *self.again]
        ]


class Arbiter:
    """Rounds of wakes per room. A pure state machine: the caller supplies the clock.

    `offer` puts a wake in its room's open round (or opens one) and says whether it opened it, so
    the caller knows to `close` that round after `window` seconds. The last `remember` results are
    kept: a wake sent again after its round closed gets the same answer (`decided`), so a device
    that lost cannot win a round of its own by resending.
    """

    def __init__(self, window: float = DEFAULT_WINDOW, margin: float = DEFAULT_MARGIN, remember: int = 1024) -> None:
        if not 0 < window <= MAX_WAKE_WINDOW:
            raise ValueError(f"the arbitration window is more than 0 and at most {MAX_WAKE_WINDOW} seconds")
        if not 0 <= margin <= 1:
            raise ValueError("the confidence margin is between 0 and 1")
        self.window = window
        self.margin = margin
        self._open: dict[str | None, Round] = {}
        self._decided: OrderedDict[tuple[str, str], WakeResult] = OrderedDict()
        self._remember = remember

    def decided(self, device_id: str, wake_id: str) -> WakeResult | None:
        """The result already given to this device's wake, if its round has closed."""
        return self._decided.get((device_id, wake_id))

    def offer(self, room: str | None, contender: Contender, now: float) -> tuple[Round, bool]:
        """Add `contender` to the open round of `room`; returns the round and whether this wake opened it.

        A device that wakes twice in one round keeps its first wake: a resend of it is counted
        once, a wake of another id is answered with the round, never granted."""
        current = self._open.get(room)
        if current is not None and now - current.opened_at > self.window:
            current = None  # its close is overdue; this wake starts the next round
        if current is None:
            current = self._open[room] = Round(room, now, self.margin)
            current.contenders.append(contender)
            return current, True
        mine = [c for c in [*current.contenders, *current.again] if c.device_id == contender.device_id]
        if not mine:
            current.contenders.append(contender)
        elif all(c.wake.wake_id != contender.wake.wake_id for c in mine):
            current.again.append(contender)
        return current, False

    def close(self, round_: Round) -> list[tuple[str, WakeResult]]:
        """End `round_` and give each contender its result."""
        if self._open.get(round_.room) is round_:
            del self._open[round_.room]
        results = round_.results()
        for device_id, result in results:
            self._decided[(device_id, result.wake_id)] = result
        while len(self._decided) > self._remember:
            self._decided.popitem(last=False)
        return results
