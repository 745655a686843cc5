"""The gateway's session timers, in a heap: each session says when it next needs looking at (its offer
expires, a completion is due a retry, an ended or idle session may be forgotten), and the sweep pops
only the entries that are due. A sweep costs the sessions that are due, not every session held, so it
costs the same after a day as after a minute. Entries are never removed early: a popped entry whose
session has moved on is looked at, found not due, and dropped (the session scheduled a new one)."""

from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

K = TypeVar("K")


class Deadlines(Generic[K]):
    """A min-heap of (monotonic time, key): `at` schedules, `due` pops every key due by then."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._order = itertools.count()  # ties break in scheduling order; keys are never compared

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, when: float, key: K) -> None:
        """Look at `key` again at monotonic time `when` (a key may be scheduled more than once)."""
        heapq.heappush(self._heap, (when, next(self._order), key))

    def due(self, now: float) -> list[K]:
        """The keys due by `now`, each once, in order of their time; their entries are gone."""
        keys: dict[K, None] = {}
        while self._heap and self._heap[0][0] <= now:
            keys[heapq.heappop(self._heap)[2]] = None
        return list(keys)

    def next_at(self) -> float | None:
        """When the earliest entry falls due (None: nothing scheduled)."""
        return self._heap[0][0] if self._heap else None
