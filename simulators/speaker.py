"""A simulated smart speaker, driven by text until the voice pipeline lands.

It asks, presents the SDK's read-back, takes the user's replies through the confirmation
dialog (one re-prompt after an unclear reply), and reports how the session ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from device_sdk.device import DeviceClient, Offer
from device_sdk.errors import RemoteError
from device_sdk.mandate import mandate_id
from device_sdk.messages import Decision, Modality, OrderResult
from device_sdk.replies import REPROMPT, ReplyDialog


@dataclass
class SpeakerRun:
    """What happened in one spoken exchange."""

    said: str
    offer: Offer | None = None
    presented: list[str] = field(default_factory=list)
    heard: list[str] = field(default_factory=list)
    decision: Decision | None = None
    mandate: str | None = None
    result: OrderResult | None = None
    error: RemoteError | None = None

    @property
    def mandate_id(self) -> str | None:
        return mandate_id(self.mandate) if self.mandate else None


class SimulatedSpeaker:
    """Runs one request-to-outcome exchange on a `DeviceClient`; `present` is its loudspeaker."""

    def __init__(self, device: DeviceClient, present: Callable[[str], None] | None = None) -> None:
        self.device = device
        self.present = present or (lambda text: None)

    async def run(self, say: str, replies: Iterable[str], *, timeout: float = 30.0) -> SpeakerRun:
        run = SpeakerRun(said=say)
        try:
            run.offer = await self.device.ask(say, timeout=timeout)
        except RemoteError as exc:
            run.error = exc
            return run
        self._say(run, run.offer.readback)
        dialog, pending = ReplyDialog(), iter(replies)
        while (decision := dialog.feed(next(pending, None))) is None:
            self._say(run, REPROMPT)
        run.heard, run.decision = dialog.heard, decision
        if decision is Decision.CONFIRM:
            run.mandate = self.device.sign(run.offer, Modality.TEXT)
        run.result = await self.device.answer(
            run.offer,
            decision,
            modality=Modality.TEXT,
            heard=" / ".join(dialog.heard) or None,
            mandate=run.mandate,
            timeout=timeout,
        )
        return run

    def _say(self, run: SpeakerRun, text: str) -> None:
        run.presented.append(text)
        self.present(text)
