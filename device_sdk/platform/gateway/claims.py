"""Controller claims: which gateway serves which device, as the retained claims on the devices'
controller topics say. A device that no live gateway serves is claimed by every gateway that hears
it; each holds the device's messages until the claims have settled, and the claim the broker
delivers last wins on all of them alike.

When a gateway goes offline (its last will, or its goodbye), the live gateways do not wait for its
devices to speak: each claims at once the share of them that a rendezvous hash over the live
gateways gives it, so an idle device is served again within moments, not at its next ping (up to
30 s). Gateways that disagree on who is live claim the same device; the rule above settles it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from device_sdk.bus.subscription import Received
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode, ProtocolError
from device_sdk.protocol.fields import now
from device_sdk.protocol.messages import ControllerClaim, DeviceInfo, DeviceStatus, GatewayStatus, decode
from device_sdk.protocol.topics import Topics

from .deadlines import Deadlines

log = logging.getLogger(__name__)

M = TypeVar("M", DeviceStatus, DeviceInfo, GatewayStatus, ControllerClaim)


def decode_as(payload: bytes, kind: type[M], topic_id: str) -> M:
    """A retained state message of `kind` that names the device or gateway of its own topic."""
    message = decode(payload)
    if not isinstance(message, kind):
        raise ProtocolError(f"this topic carries {kind.model_fields['type'].default}", ErrorCode.UNEXPECTED_MESSAGE)
    named = message.gateway_id if isinstance(message, GatewayStatus) else message.device_id
    if named != topic_id:
        raise ProtocolError(f"the message names {named}, its topic {topic_id}", ErrorCode.WRONG_TOPIC)
    return message


class ClaimBook:
    """One gateway's view of the claims and of the gateways' status, and its own claiming of devices."""

    def __init__(
        self,
        gateway_id: str,
        topics: Topics,
        *,
        settle: float,
        publish: Callable[[str, bytes], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        replay: Callable[[Received], None],
        lost: Callable[[str], None],
    ) -> None:
        self.gateway_id = gateway_id
        self.topics = topics
        self.settle = settle
        """Seconds to wait after a claim's echo, for the claims of other gateways to arrive too."""
        self.claims: dict[str, str] = {}
        self.gateways_online: dict[str, bool] = {}
        self.offline_since: dict[str, float] = {}
        self._went_offline: Deadlines[str] = Deadlines()
        self._publish = publish
        """Publishes a retained message (a claim)."""
        self._spawn = spawn
        self._replay = replay
        """Routes a held message again, once this gateway serves its device."""
        self._lost = lost
        """Hears of a device this gateway served and another gateway took over."""
        self._claiming: dict[str, list[Received]] = {}
        self._claim_echo: dict[str, asyncio.Event] = {}

    def serving(self, device_id: str) -> bool:
        """True when the claims say this gateway serves the device."""
        return self.claims.get(device_id) == self.gateway_id

    def gone(self, mono: float, grace: float) -> list[str]:
        """The devices that said, while served here, that they went offline more than `grace` seconds
        ago, each once, in the call after its grace ran out (a heap: no walk over every offline device)."""
        due = self._went_offline.due(mono - grace)
        return [d for d in due if d in self.offline_since and mono - self.offline_since[d] >= grace]

    def heard(self, device_id: str) -> None:
        """The device spoke, so it is online."""
        self.offline_since.pop(device_id, None)

    # retained state ----------------------------------------------------------------------

    def on_gateway_status(self, topic: str, payload: bytes) -> None:
        """A gateway's retained status (empty: cleared); raises `ProtocolError` for a bad one."""
        gateway_id = self.topics.gateway_of(topic)
        if not payload:
            return
        online = decode_as(payload, GatewayStatus, gateway_id).online
        was = self.gateways_online.get(gateway_id)
        self.gateways_online[gateway_id] = online
        if was and not online and gateway_id != self.gateway_id:
            self._spawn(self.take_over(gateway_id))

    def heir(self, device_id: str) -> str:
        """The live gateway that takes `device_id` over (rendezvous hashing: each device goes to the
        gateway with the highest hash of the pair, so a death moves only the dead gateway's devices)."""
        live = [g for g, up in self.gateways_online.items() if up and g != self.gateway_id] + [self.gateway_id]
        return max(live, key=lambda g: hashlib.blake2b(f"{device_id}\0{g}".encode(), digest_size=8).digest())

    async def take_over(self, dead: str, chunk: int = 256) -> int:
        """Claim the devices of the `dead` gateway that fall to this one; how many were claimed. (One
        walk over the claims per gateway death; the claims go out `chunk` at a time.)"""
        mine = [d for d, holder in self.claims.items() if holder == dead and self.heir(d) == self.gateway_id]
        mine = [d for d in mine if d not in self._claiming]
        if mine:
            log.info("gateway %s is offline: taking over %d of its devices", dead, len(mine))
        for start in range(0, len(mine), chunk):
            batch = [d for d in mine[start : start + chunk] if self.claims.get(d) == dead and d not in self._claiming]
            for device_id in batch:
                self._claiming[device_id] = []
            await asyncio.gather(*(self._claim(device_id) for device_id in batch))
        return len(mine)

    def on_claim(self, device_id: str, payload: bytes) -> None:
        """A device's retained claim (empty: cleared); raises `ProtocolError` for a bad one."""
        if not payload:
            self.claims.pop(device_id, None)
            return
        claim = decode_as(payload, ControllerClaim, device_id)
        if self.serving(device_id) and claim.controller_id != self.gateway_id:
            log.info("device %s is now served by %s", device_id, claim.controller_id)
            self._lost(device_id)
        self.claims[device_id] = claim.controller_id
        if claim.controller_id == self.gateway_id and device_id in self._claim_echo:
            self._claim_echo[device_id].set()

    def on_status(self, device_id: str, payload: bytes) -> None:
        """A served device's status, once `admit` let it through; raises `ProtocolError` for a bad one."""
        decode_as(payload, DeviceStatus, device_id)
        self.heard(device_id)

    # serving -----------------------------------------------------------------------------

    def admit(self, device_id: str, leaf: str, received: Received) -> bool:
        """True when this gateway serves the device and handles its message now; a message of a device
        being claimed is held, and routed again if the claim is won."""
        if device_id in self._claiming:
            self._hold(device_id, leaf, received)
            return False
        if leaf == "status" and not self._status_wants_service(device_id, received.payload):
            return False
        return self._serves(device_id, received)

    def _status_wants_service(self, device_id: str, payload: bytes) -> bool:
        """An online (or unreadable) status asks for a controller; an offline one only concerns its holder."""
        try:
            status = decode(payload)
        except ProtocolError:
            return True
        if isinstance(status, DeviceStatus) and not status.online:
            if self.serving(device_id) and device_id not in self.offline_since:
                self.offline_since[device_id] = since = time.monotonic()
                self._went_offline.at(since, device_id)
            return False
        return True

    def _serves(self, device_id: str, received: Received) -> bool:
        """True when this gateway controls the device. If no live gateway does, claim it and hold
        its messages until the claims have settled: every gateway sees the claims in the broker's
        order, and the one delivered last wins."""
        holder = self.claims.get(device_id)
        if holder == self.gateway_id:
            return True
        if holder is not None and self.gateways_online.get(holder, False):
            return False
        self._claiming[device_id] = [received]
        self._spawn(self._claim(device_id))
        return False

    def _hold(self, device_id: str, leaf: str, received: Received) -> None:
        """Keep a message of a device being claimed: up to 100 messages and, apart, 100 audio chunks
        (10 s at 100 ms), so a burst of audio cannot push out a request."""
        held = self._claiming[device_id]
        audio = sum(r.topic.endswith("/audio") for r in held)
        if (leaf == "audio" and audio < 100) or (leaf != "audio" and len(held) - audio < 100):
            held.append(received)

    async def _claim(self, device_id: str) -> None:
        echo = self._claim_echo.setdefault(device_id, asyncio.Event())
        echo.clear()
        try:
            await self._publish_claim(device_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await echo.wait()
            await asyncio.sleep(self.settle)
        except DeviceSdkError as exc:
            log.warning("could not claim %s (%s); its next message tries again", device_id, exc)
        finally:
            held = self._claiming.pop(device_id, [])
            self._claim_echo.pop(device_id, None)
        if self.serving(device_id):
            log.info("serving device %s", device_id)
            for received in held:
                self._replay(received)

    async def republish(self) -> None:
        """Publish this gateway's claims again (a restarted broker forgot them)."""
        for device_id, holder in list(self.claims.items()):
            if holder == self.gateway_id:
                await self._publish_claim(device_id)

    async def _publish_claim(self, device_id: str) -> None:
        claim = ControllerClaim(device_id=device_id, controller_id=self.gateway_id, claimed_at=now())
        await self._publish(self.topics.device_controller(device_id), claim.encode())
