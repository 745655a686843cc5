"""The quota of open checkouts per device: a device that asks and asks without ever answering
holds at most `most` checkouts open (each one a proposal from the agent, a checkout at the
merchant and records in the audit log); its next new session is refused with `quota_exceeded`
before anything is asked, opened or recorded. A slot frees when its session ends (answered,
declined, expired) or its request got no offer; a new request in a session that holds a slot, or
the resend of an ended session's request, takes none."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping

from device_sdk.protocol.errors import ErrorCode, LimitError

from .flow import Refuse, SessionKey
from .session import Session, State

OPEN = frozenset({State.AWAITING_PROPOSAL, State.AWAITING_CONFIRMATION, State.COMPLETING})
"""The states in which a session holds a checkout open (or is about to open one)."""


class CheckoutQuota:
    """Which sessions of each device hold a slot, and how many of their requests are on their way."""

    def __init__(self, most: int, sessions: Mapping[SessionKey, Session], refuse: Refuse) -> None:
        self.most = most
        self.refused = 0
        self._sessions = sessions
        self._refuse = refuse
        self._held: dict[str, dict[str, int]] = {}
        """device -> session id -> its requests queued or being handled."""

    def open(self, device_id: str) -> int:
        """Slots the device holds now."""
        held = self._held.get(device_id, {})
        self._settle(device_id, held)
        return len(held)

    def take(self, device_id: str, session_id: str, *, ref: str | None = None) -> bool:
        """Let an agent request through, holding a slot for its session; else refuse it."""
        session = self._sessions.get((device_id, session_id))
        if session is not None and session.state is State.ENDED:
            return True  # its resend gets the result again, anything else `session_closed`: it opens nothing
        held = self._held.get(device_id, {})
        if session_id in held:
            held[session_id] += 1
            return True
        self._settle(device_id, held)
        if len(held) >= self.most:
            self.refused += 1
            text = f"this device has {len(held)} checkouts open, its quota: answer or cancel one first"
            self._refuse(device_id, LimitError(text, ErrorCode.QUOTA_EXCEEDED), ref=ref, session_id=session_id)
            return False
        self._held.setdefault(device_id, {})[session_id] = 1
        return True

    async def holding(self, device_id: str, session_id: str, work: Awaitable[None]) -> None:
        """Handle a request that `take` let through; then free its slot unless its session holds a checkout."""
        try:
            await work
        finally:
            held = self._held.get(device_id)
            if held is not None and session_id in held:
                held[session_id] -= 1
                self._settle(device_id, held)

    def _settle(self, device_id: str, held: dict[str, int]) -> None:
        """Free the slots of sessions with no request on its way and no checkout open."""
        for session_id, waiting in list(held.items()):
            session = self._sessions.get((device_id, session_id))
            if waiting <= 0 and (session is None or session.state not in OPEN):
                del held[session_id]
        if not held:
            self._held.pop(device_id, None)
