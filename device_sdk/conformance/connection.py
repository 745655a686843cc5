"""The connection's requirements in a conformance run: audio framing, the last will on an unclean
drop, coming back and hearing the down topic again, a clean goodbye, and the heartbeat."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from device_sdk.protocol.conformance import ConformanceControl
from device_sdk.protocol.fields import Capability, Decision, DeviceKind, Outcome
from device_sdk.protocol.messages import DeviceStatus, Ping

from .audio_check import audio_problems
from .observer import Seen
from .offers import offer_for

if TYPE_CHECKING:
    from .run import ConformanceRun


async def audio(run: ConformanceRun) -> None:
    info = run.info
    if info is None or Capability.MIC not in info.capabilities:
        run.found.record("R-AUDIO-FRAMING", None, "the device has no mic")
        return
    since = run.obs.now()
    await run.obs.send(ConformanceControl(run_id=run.run_id, action="audio").encode())
    problems, evidence = await audio_problems(run.obs, since, run.left(run.settings.step_wait))
    run.found.record("R-AUDIO-FRAMING", not problems, "; ".join(problems) or evidence)


def status_since(since: float) -> Callable[[Seen], bool]:
    return lambda s: isinstance(s.message, DeviceStatus) and s.at >= since


async def drop_and_reconnect(run: ConformanceRun) -> None:
    f, since = run.found, run.obs.now()
    await run.obs.send(ConformanceControl(run_id=run.run_id, action="drop").encode())
    first = await run.obs.wait(status_since(since), run.left(run.settings.step_wait), since)
    if first is None:
        f.record("R-WILL", False, f"no device.status within {run.settings.step_wait:g} s of the drop")
        f.record("R-RECONNECT", False, "the device did not come back")
        return
    online = first if first.message.online else None
    f.record(
        "R-WILL",
        not first.message.online,
        f"online false {first.at - since:.2f} s after the drop"
        if not first.message.online
        else "the device came back online with no offline status before",
    )
    if online is None:
        online = await run.obs.wait(
            lambda s: isinstance(s.message, DeviceStatus) and s.message.online, run.left(15.0), first.at + 0.0001
        )
    if online is None:
        f.record("R-RECONNECT", False, "no online status within 15 s of the drop")
        return
    f.record("R-RECONNECT", True, f"online again {online.at - since:.2f} s after the drop")
    await asyncio.sleep(min(0.5, run.left(0.5)))
    request = await run.ask("after_drop", Decision.CONFIRM)
    if request is None:
        f.record("R-RESUBSCRIBE", False, "after the reconnect the device did not hear a conformance.control ask")
        return
    offer = offer_for(request, run.kind or DeviceKind.OTHER, run.run_id)
    seen = await run.result(offer.checkout_id, await run.offer(offer), run.settings.step_wait)
    f.record(
        "R-RESUBSCRIBE",
        seen is not None,
        "after the reconnect it heard the control and answered the offer"
        if seen
        else "after the reconnect it sent a request but did not answer the offer",
    )
    await run.end(offer, Outcome.ORDERED if seen else Outcome.NOT_CONFIRMED)


async def clean_reconnect(run: ConformanceRun) -> None:
    since = run.obs.now()
    await run.obs.send(ConformanceControl(run_id=run.run_id, action="reconnect").encode())
    first = await run.obs.wait(status_since(since), run.left(run.settings.step_wait), since)
    if first is None:
        run.found.record("R-CLEAN-OFFLINE", False, "no status within the wait after a reconnect was asked")
        return
    run.found.record(
        "R-CLEAN-OFFLINE",
        not first.message.online,
        "online false before it went away" if not first.message.online else "it went away without saying online false",
    )
    await run.obs.wait(
        lambda s: isinstance(s.message, DeviceStatus) and s.message.online,
        run.left(run.settings.step_wait),
        first.at + 0.0001,
    )


def heartbeat(run: ConformanceRun, began: float) -> None:
    """Pings with an increasing `seq` (a reconnect may start it again), at least every `heartbeat_gap`
    seconds from the run's start, and at most 2 a second on average."""
    pings = run.obs.find(lambda s: isinstance(s.message, Ping))
    gap = run.settings.heartbeat_gap
    if not pings:
        run.found.record("R-HEARTBEAT", False, f"no ping in {run.obs.now() - began:.0f} s")
        run.found.record("R-HEARTBEAT-INTERVAL", False, f"no ping within {gap:g} s")
        return
    restarts = [s.at for s in run.obs.find(lambda s: isinstance(s.message, DeviceStatus) and s.message.online)]
    falls, widest = 0, pings[0].at - began
    for before, after in itertools.pairwise(pings):
        reconnected = any(before.at < t < after.at for t in restarts)
        falls += after.message.seq <= before.message.seq and not reconnected
        if not reconnected:
            widest = max(widest, after.at - before.at)
    run.found.record(
        "R-HEARTBEAT",
        not falls,
        f"{len(pings)} ping{'s' * (len(pings) > 1)}, seq {pings[0].message.seq} to {pings[-1].message.seq}, "
        f"each answered with a pong" + (f"; {falls} times not increasing" if falls else ""),
    )
    span = pings[-1].at - pings[0].at
    rate = (len(pings) - 1) / span if span > 0 else 0.0
    problems = [f"a gap of {widest:.1f} s"] if widest > gap else []
    problems += [f"{rate:.1f} pings a second"] if rate > 2.0 else []
    run.found.record(
        "R-HEARTBEAT-INTERVAL", not problems, "; ".join(problems) or f"widest gap {widest:.1f} s, {rate:.2f} a second"
    )
