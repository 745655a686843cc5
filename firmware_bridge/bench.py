"""`device-sdk bench frames`: the frame codec alone, with no link.

A pseudo-random payload (a JPEG does not compress either) is encoded into frames of one ATT
payload and reassembled, `repeats` times; the speeds are the best run's, because a shared
machine only ever makes a run slower. `codec_mb_s` is payload bytes over encode plus decode time.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

from .frames import MessageType, Reassembler, encode


def run_bench_frames(size: int = 102_400, att_payload: int = 244, repeats: int = 50) -> dict[str, Any]:
    payload = random.Random(0).randbytes(size)
    encode_s = decode_s = math.inf
    frames: list[bytes] = []
    for _ in range(repeats):
        started = time.perf_counter()
        frames = encode(MessageType.IMAGE, 1, payload, att_payload)
        encoded = time.perf_counter()
        reassembler = Reassembler(att_payload)
        message = None
        for frame in frames:
            message = reassembler.feed(frame, 0.0) or message
        decoded = time.perf_counter()
        if message is None or message.payload != payload:
            raise AssertionError("the frames did not give the payload back")
        encode_s, decode_s = min(encode_s, encoded - started), min(decode_s, decoded - encoded)
    least = math.ceil(size / att_payload)
    return {
        "bytes": size,
        "att_payload": att_payload,
        "frames": len(frames),
        "min_frames": least,
        "efficiency": round(least / len(frames), 4),
        "encode_mb_s": round(size / encode_s / 1e6, 1),
        "decode_mb_s": round(size / decode_s / 1e6, 1),
        "codec_mb_s": round(size / (encode_s + decode_s) / 1e6, 1),
    }
