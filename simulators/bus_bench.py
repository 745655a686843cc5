"""`device-sdk bench bus`: agent round trips (request out, proposal back) through each broker.

Latency is measured with one request in flight; throughput with `--concurrency` in flight.
The agent worker runs in a child process, as agent workers do in production, so the gateway
side and the agent side each get a core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.password import PASSWORD_ENV, broker_url
from device_sdk.bus.url import BrokerUrl
from device_sdk.platform.agent import AgentWorker, RemoteAgent
from device_sdk.protocol.errors import BusError
from device_sdk.protocol.messages import AgentRequest

COMMAND = "buy two packs of AA batteries and a bottle of milk"


def _percentile(sorted_ms: list[float], q: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(q * len(sorted_ms)) - 1))
    return round(sorted_ms[index], 3)


async def measure(url: BrokerUrl, n: int, concurrency: int) -> dict[str, Any]:
    """Round-trip figures through the broker at `url`, with an agent worker in a child process."""
    env = {**os.environ, PASSWORD_ENV: url.password} if url.password else None  # never on its command line
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.bus_bench", "worker", url.argument(), stdout=subprocess.PIPE, env=env
    )
    try:
        assert worker.stdout is not None
        ready = await worker.stdout.readline()
        if ready.strip() != b"ready":
            raise BusError(f"the bench agent worker did not start on {url}")
        async with MqttBus(url, f"bench-{os.getpid()}") as bus:
            agent = RemoteAgent(bus, f"bench-{os.getpid()}", timeout=30)
            await agent.start()
            counter = 0

            async def round_trip() -> float:
                nonlocal counter
                counter += 1
                request = AgentRequest(
                    request_id=f"r{counter}", device_id="bench", session_id=f"s{counter}", text=COMMAND
                )
                start = time.perf_counter()
                await agent.propose(request)
                return (time.perf_counter() - start) * 1000

            for _ in range(min(200, n)):  # warm-up
                await round_trip()
            latencies = sorted([await round_trip() for _ in range(n)])

            start = time.perf_counter()
            sem = asyncio.Semaphore(concurrency)

            async def limited() -> None:
                async with sem:
                    await round_trip()

            await asyncio.gather(*(limited() for _ in range(n)))
            elapsed = time.perf_counter() - start
            await agent.stop()
    finally:
        worker.terminate()
        await worker.wait()
    return {
        "rtt_ms": {
            "p50": _percentile(latencies, 0.50),
            "p95": _percentile(latencies, 0.95),
            "p99": _percentile(latencies, 0.99),
            "mean": round(statistics.fmean(latencies), 3),
        },
        "per_s": round(n / elapsed, 1),
        "n": n,
        "concurrency": concurrency,
    }


async def run_bench_bus(args: argparse.Namespace) -> int:
    results: dict[str, Any] = {}
    async with EmbeddedBroker() as embedded:
        results["embedded"] = await measure(embedded.url, args.n, args.concurrency)
    if (given := broker_url(args.mosquitto, args.broker_password_file)) is not None:
        results["mosquitto"] = await measure(given, args.n, args.concurrency)
    else:
        try:
            async with MosquittoServer() as server:
                results["mosquitto"] = await measure(server.url, args.n, args.concurrency)
        except BusError as exc:
            results["mosquitto"] = {"error": str(exc)}
    results["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    if args.json:
        print(json.dumps(results))
    else:
        for name in ("embedded", "mosquitto"):
            r = results[name]
            if "error" in r:
                print(f"{name:>10}: {r['error']}")
                continue
            rtt = r["rtt_ms"]
            print(
                f"{name:>10}: rtt p50 {rtt['p50']:.2f} ms  p95 {rtt['p95']:.2f} ms  p99 {rtt['p99']:.2f} ms"
                f"  |  {r['per_s']:.0f} round trips/s ({r['concurrency']} in flight, n={r['n']})"
            )
    return 0 if all("error" not in results[k] for k in ("embedded", "mosquitto")) else 1


async def _worker(url: str) -> None:
    from .agent_core import CatalogAgent

    broker = broker_url(url)
    assert broker is not None
    async with MqttBus(broker, f"bench-worker-{os.getpid()}") as bus, AgentWorker(bus, CatalogAgent(), shared=False):
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker(sys.argv[2]))
