"""The platform's side of a suggestion on the bus: offer it to a household's devices, gather their
answers, and let the arbitration pick the one that speaks.

`suggestion.offer` goes to each device's `suggestion` topic; each answers `suggestion.result` on its
`suggestion_result` topic (docs/protocol.md, "Suggestions"). An answer that is not a valid result
for this suggestion from the device whose topic it came on is ignored; a device that does not
answer within `timeout` seconds takes no part. Of those that took it, one is picked
(`suggestion_arbitration.pick_speaker`); with none, nobody speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

from device_sdk.bus.mqtt import MqttBus
from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import ProtocolError
from device_sdk.protocol.suggestions import SuggestionOffer, SuggestionResult
from device_sdk.protocol.topics import Topics

from .suggestion_arbitration import pick_speaker


async def offer_suggestion(
    bus: MqttBus,
    offer: SuggestionOffer,
    device_ids: Sequence[str],
    *,
    topics: Topics | None = None,
    timeout: float = 2.0,
    heard_db: Mapping[str, float] | None = None,
) -> tuple[list[SuggestionResult], str | None]:
    """Each answering device's result (by device id) and the device picked to speak (None: none took it)."""
    topics = topics or Topics()
    wanted = set(device_ids)
    results: dict[str, SuggestionResult] = {}
    sub = await bus.subscribe(*(topics.device_suggestion_result(d) for d in sorted(wanted)))
    try:
        for device_id in sorted(wanted):
            await bus.publish(topics.device_suggestion(device_id), offer.encode())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                async for message in sub:
                    try:
                        device_id, _ = topics.device_of(message.topic)
                        strict_json.check(message.payload)
                        result = SuggestionResult.model_validate_json(message.payload)
                    except (ProtocolError, ValidationError):
                        continue
                    if result.suggestion_id == offer.suggestion_id and result.device_id == device_id:
                        results[device_id] = result
                    if set(results) == wanted:
                        break
    finally:
        await bus.unsubscribe(sub)
    answered = [results[d] for d in sorted(results)]
    return answered, pick_speaker(answered, heard_db=heard_db)
