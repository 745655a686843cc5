"""Per-device rate limits at the gateway: one device that floods cannot starve the others.

Every device served gets token buckets of its own, checked before anything is decoded, spawned,
asked or recorded for what it sent: every message on its up and status topics, audio bytes,
pings, wakes, and the messages that move or look up a session (agent requests, confirmations,
hand-overs, step-ups, order-status queries). What goes over a bucket is dropped and answered with
`rate_limited` to that device only, at most once a second per kind (a session's message is
answered every time, so a device waiting for its answer hears why). The quota of open checkouts
is `quota.py`'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from device_sdk.media.audio import MAX_CHUNK
from device_sdk.protocol.errors import ConfigError, ErrorCode, LimitError
from device_sdk.protocol.messages import AgentRequest, Ping, Wake

from .flow import Refuse


@dataclass(frozen=True)
class Limits:
    """What one device may send a gateway; every device has its own buckets. Defaults leave an
    honest device (a heartbeat every 30 s, or 2 s, a few orders a minute, 16 kHz audio) far below them."""

    open_checkouts: int = 4
    """Checkouts a device may have open at once (offered, not yet answered or expired)."""
    requests_per_minute: float = 60.0
    """Agent requests, confirmations, hand-overs, step-ups and order-status queries, together: each
    can open a checkout, write to the audit log or read the store."""
    request_burst: int = 20
    messages_per_second: float = 50.0
    """Every message on the device's up and status topics, before it is decoded."""
    message_burst: int = 100
    pings_per_second: float = 2.0
    ping_burst: int = 5
    wakes_per_second: float = 4.0
    """Each wake can open an arbitration round (and its audit record); rounds last the wake window."""
    wake_burst: int = 8
    audio_bytes_per_second: int = 96_000
    """Three times 16 kHz s16le mono, headers included."""
    audio_burst_bytes: int = 320_000
    audio_streams: int = 4
    """Audio streams open at once per device; a new one beyond ends the device's oldest."""
    audio_queue_chunks: int = 100
    """Chunks a stream keeps for a listener that falls behind; the oldest are dropped."""
    refusal_interval: float = 1.0
    """Seconds between two `rate_limited` errors of one kind to one device."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ConfigError(f"the gateway's limit {name} must be above 0, not {value}")
        if self.audio_burst_bytes < MAX_CHUNK:
            raise ConfigError(f"audio_burst_bytes must hold one whole audio chunk ({MAX_CHUNK} bytes)")


SESSION_MOVES = frozenset({"confirmation.result", "handover", "step_up", "order.status"})
"""Besides agent requests, the messages that move or look up a session: they share the request bucket."""


class Kind(StrEnum):
    """What a bucket counts."""

    MESSAGE = "message"
    AUDIO = "audio"
    REQUEST = "request"
    PING = "ping"
    WAKE = "wake"


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up; a take that finds too few takes none."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst, self.tokens, self.at = rate, burst, burst, now

    def take(self, now: float, cost: float = 1.0) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def full(self, now: float) -> bool:
        return self.tokens + (now - self.at) * self.rate >= self.burst


class DeviceLimiter:
    """Each device's buckets; refuses through `refuse` (the gateway's answer to a device)."""

    def __init__(
        self,
        limits: Limits,
        refuse: Refuse,
        *,
        clock: Callable[[], float] = time.monotonic,
        prune_at: int = 4096,
        awaited: Callable[[str, Any], bool] = lambda device_id, message: False,
    ) -> None:
        self.limits = limits
        self._awaited = awaited
        """Whether a message answers an offer the gateway awaits an answer to: a user's answer is never
        refused for rate (the open-checkout quota bounds them); a resend of it is, like any other."""
        self.refused: dict[Kind, int] = dict.fromkeys(Kind, 0)
        """Messages dropped by each kind of bucket, over all devices."""
        self._refuse = refuse
        self._clock = clock
        self._prune_at = prune_at
        self._buckets: dict[tuple[str, Kind], TokenBucket] = {}
        self._told: dict[tuple[str, Kind], float] = {}
        per_minute = limits.requests_per_minute / 60.0
        self._shape: dict[Kind, tuple[float, float]] = {
            Kind.MESSAGE: (limits.messages_per_second, limits.message_burst),
            Kind.AUDIO: (limits.audio_bytes_per_second, limits.audio_burst_bytes),
            Kind.REQUEST: (per_minute, limits.request_burst),
            Kind.PING: (limits.pings_per_second, limits.ping_burst),
            Kind.WAKE: (limits.wakes_per_second, limits.wake_burst),
        }

    def admit_raw(self, device_id: str, leaf: str, payload: bytes) -> bool:
        """A message as it arrived, before decoding: audio by its bytes, anything else as one message."""
        if leaf == "audio":
            return self.admit(device_id, Kind.AUDIO, len(payload), ref="audio")
        return self.admit(device_id, Kind.MESSAGE, ref=leaf)

    def admit_message(self, device_id: str, message: Any) -> bool:
        """A decoded message, by what it asks of the gateway: pings, wakes and the session's messages
        have buckets of their own; anything else passed `admit_raw` already."""
        if isinstance(message, Ping):
            return self.admit(device_id, Kind.PING, ref="ping")
        if isinstance(message, Wake):
            return self.admit(device_id, Kind.WAKE, ref=message.wake_id, session_id=message.session_id)
        if isinstance(message, AgentRequest):
            ref: str | None = message.request_id
        elif getattr(message, "type", None) in SESSION_MOVES:
            if self._awaited(device_id, message):
                return True
            ref = getattr(message, "checkout_id", None)
        else:
            return True
        return self.admit(device_id, Kind.REQUEST, ref=ref, session_id=message.session_id, always=True)

    def admit(
        self,
        device_id: str,
        kind: Kind,
        cost: float = 1.0,
        *,
        ref: str | None = None,
        session_id: str | None = None,
        always: bool = False,
    ) -> bool:
        """Take `cost` from the device's `kind` bucket; else refuse (`always`, or once per interval)."""
        now = self._clock()
        key = (device_id, kind)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            rate, burst = self._shape[kind]
            bucket = self._buckets[key] = TokenBucket(rate, burst, now)
        if bucket.take(now, cost):
            return True
        self.refused[kind] += 1
        if always or now - self._told.get(key, -1e18) >= self.limits.refusal_interval:
            self._told[key] = now
            limit = self._describe(kind)
            error = LimitError(f"over this device's limit of {limit}: dropped", ErrorCode.RATE_LIMITED)
            self._refuse(device_id, error, ref=ref, session_id=session_id)
        return False

    def _describe(self, kind: Kind) -> str:
        rate, burst = self._shape[kind]
        if kind is Kind.AUDIO:
            return f"{rate:.0f} audio bytes a second (bursts of {burst:.0f})"
        if kind is Kind.REQUEST:
            return f"{rate * 60:g} session messages a minute (bursts of {burst:.0f})"
        return f"{rate:g} {kind.value}s a second (bursts of {burst:.0f})"

    def _prune(self, now: float) -> None:
        """Forget the buckets that are full again (their devices went quiet); grow the table only
        when every device in it is busy."""
        for key, bucket in list(self._buckets.items()):
            if bucket.full(now):
                del self._buckets[key]
                self._told.pop(key, None)
        if len(self._buckets) >= self._prune_at // 2:
            self._prune_at *= 2
