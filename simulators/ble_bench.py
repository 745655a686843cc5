"""`device-sdk bench ble`: a photo of about 100 KB from the simulated glasses to the gateway over
the virtual link at ATT MTU 247, through bleak, the frame protocol and its flow control.

`att_packets` counts the image frames on the data path (resends included), as the peers' figures
do; `all_att_packets` adds everything else the transfer took both ways (the capture command and
the batched acks); `min_att_packets` is ceil(bytes / 244), the least any
framing could take; `codec_mb_s` is the frame codec alone (encode plus decode, `bench frames`);
`transfer_s` the time from the capture command to the whole photo (event-loop speed on the
virtual link, not radio speed).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from firmware_bridge.bench import run_bench_frames
from firmware_bridge.link import GlassesLink, find_glasses

from .ble_radio import BumbleClient, BumbleScanner, VirtualRadio
from .glasses import SimulatedGlasses
from .photos import product_photo

BENCH_SIZE, BENCH_QUALITY = (1280, 960), 88
"""A product photo of about 100 KB."""


async def run_bench_ble(repeats: int = 5, mtu: int = 247) -> dict[str, Any]:
    photo = await asyncio.to_thread(
        lambda: product_photo("bat-aa-4", "AA batteries, pack of 4", size=BENCH_SIZE, quality=BENCH_QUALITY)
    )
    radio = VirtualRadio()
    async with SimulatedGlasses(radio, photo=lambda: photo) as glasses:
        central = await radio.central()
        found = await find_glasses(name=glasses.name, backend=BumbleScanner, central=central)
        async with GlassesLink(found[0].device, backend=BumbleClient, options={"mtu": mtu}, health_every=0) as link:
            assert link.limits is not None
            att = link.limits.att_payload
            best = math.inf
            packets = everything = 0
            for _ in range(repeats):
                sent_before, in_before = glasses.frames_sent, link.frames_out
                started = time.perf_counter()
                jpeg = await link.capture()
                best = min(best, time.perf_counter() - started)
                if jpeg != photo:
                    raise AssertionError("the photo arrived different")
                packets = glasses.camera_frames_last
                everything = glasses.frames_sent - sent_before + link.frames_out - in_before
    least = math.ceil(len(photo) / att)
    codec = run_bench_frames(len(photo), att, repeats=50)
    return {
        "bytes": len(photo),
        "att_mtu": att + 3,
        "att_packets": packets,
        "min_att_packets": least,
        "efficiency": round(least / packets, 4),
        "all_att_packets": everything,
        "all_efficiency": round(least / everything, 4),
        "codec_mb_s": codec["codec_mb_s"],
        "transfer_s": round(best, 4),
    }
