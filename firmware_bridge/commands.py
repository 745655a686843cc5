"""The bridge's commands registered with `device-sdk` (entry-point group `device_sdk.commands`):
`bench frames`, the frame codec alone."""

from __future__ import annotations

import argparse

from device_sdk.commands import Commands, print_report

from .bench import run_bench_frames


def register(commands: Commands) -> None:
    bench = commands.group("bench", "benchmarks (figures as JSON with --json)")
    frames = bench.add("frames", "the BLE frame codec alone: frames per message and MB/s", run=_bench_frames)
    frames.add_argument("--bytes", type=int, default=102_400, help="message size (default 100 KB)")
    frames.add_argument("--att-payload", type=int, default=244, help="ATT MTU minus 3 (default 244: MTU 247)")
    frames.add_argument("--repeats", type=int, default=50, help="runs; the best counts (default 50)")
    frames.add_argument("--json", action="store_true")


def _bench_frames(args: argparse.Namespace) -> int:
    return print_report(run_bench_frames(args.bytes, args.att_payload, args.repeats), args.json)
