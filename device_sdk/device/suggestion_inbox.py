"""A device's inbox of suggestions on the bus: each `suggestion.offer` on its `suggestion` topic is
answered with `suggestion.result` from its settings (`suggestions.SuggestionGate`), and nothing is
said here: the device speaks only once the platform's arbitration picked it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pydantic import ValidationError

from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import DeviceSdkError
from device_sdk.protocol.suggestions import SuggestionOffer, SuggestionResult

from .client import DeviceClient
from .suggestions import SuggestionGate

log = logging.getLogger(__name__)


class SuggestionInbox:
    """Answers the suggestions offered to `device` while entered (`async with SuggestionInbox(...)`);
    it asks the device whether a session is running on it (`DeviceClient.session_running`: an offer
    presented awaiting its answer, or a request in flight), and then declines as `busy`. A device with
    an edge policy takes suggestions only when the policy allows them (`suggestions = true`).
    `answered` keeps each offer with its answer."""

    def __init__(self, device: DeviceClient, gate: SuggestionGate) -> None:
        self.device = device
        if gate.edge is None and device.edge is not None:
            gate.edge = device.edge.policy  # its owner's `suggestions` switch holds over the user's opt-in
        self.gate = gate
        self.answered: list[tuple[SuggestionOffer, SuggestionResult]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SuggestionInbox:
        bus, topics = self.device.bus, self.device.topics
        self._sub = await bus.subscribe(topics.device_suggestion(self.device.device_id))
        self._task = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.device.bus.unsubscribe(self._sub)

    async def _serve(self) -> None:
        topic = self.device.topics.device_suggestion_result(self.device.device_id)
        async for message in self._sub:
            try:
                strict_json.check(message.payload)
                offer = SuggestionOffer.model_validate_json(message.payload)
                result = self.gate.answer(offer, self.device.device_id, busy=self.device.session_running)
                await self.device.bus.publish(topic, result.encode())
            except (ValidationError, DeviceSdkError) as exc:  # a bad offer or settings file: nothing said
                log.warning("suggestion on %s not answered: %s", message.topic, exc)
                continue
            self.answered.append((offer, result))
