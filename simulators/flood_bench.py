"""`device-sdk bench flood`: one device floods the gateway (agent requests, pings, wakes, audio and
bogus confirmations) while another device orders again and again; how long the other device waits.

The gateway (with the reference agent, the checkout stand-in and its audit log) runs in this
process; the flooding device and the ordering device each run in a child process, the flooder at
nice 19, all on loopback through one broker (a Mosquitto started on a free port, or the embedded
one). The flood is bounded in messages and in time; the other device orders at an honest pace
(every 2.5 s by default: two exchanges each, within the gateway's default limits).
`other_device_p95_ms` is the 95th percentile of the other device's exchanges (request to offer,
confirmation to result) during the flood; `quiet_p95_ms` the same before it. `flood_refused`
counts the error codes the flooder got back; `flood_open_checkouts` and `flood_audit_records`
what the flood left at the gateway; `gateway_rss_mb_*` this process's resident memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.password import PASSWORD_ENV, broker_url
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
from device_sdk.media.audio import AudioChunk
from device_sdk.platform.checkout.policy import PolicyBook
from device_sdk.platform.gateway.session import State
from device_sdk.protocol.errors import BusError, DeviceSdkError
from device_sdk.protocol.fields import Decision, Modality
from device_sdk.protocol.messages import (
    AgentRequest,
    AudioStart,
    ConfirmationResult,
    Error,
    Ping,
    Wake,
    decode,
)
from device_sdk.protocol.topics import Topics

from .scenario import ShopBackend

FLOODER, OTHER = "flood-1", "other-1"
OPEN = (State.AWAITING_PROPOSAL, State.AWAITING_CONFIRMATION, State.COMPLETING)
AUDIO_PCM = 32_000
"""Bytes of PCM in each flooded audio chunk: one second of 16 kHz audio."""


def _rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process (default this one), MB."""
    with open(f"/proc/{pid or 'self'}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))], 1)


async def _child(url: BrokerUrl, role: str, *args: str, nice: bool = False) -> asyncio.subprocess.Process:
    """A child on the broker at `url`: its user on the command line, its password in the environment."""
    env = {**os.environ, PASSWORD_ENV: url.password} if url.password else None
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.flood_bench", role, url.argument(), *args, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, preexec_fn=(lambda: os.nice(19)) if nice else None,
    )  # fmt: skip


async def _line(child: asyncio.subprocess.Process, timeout: float) -> bytes:
    assert child.stdout is not None
    async with asyncio.timeout(timeout):
        return (await child.stdout.readline()).strip()


async def _measure(url: BrokerUrl, seconds: float, most: int, every: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="device-sdk-flood-") as tmp:
        database = Path(tmp) / "shop.db"
        roomy = {"orders_per_minute": 1_000_000, "daily_cap_minor": {"CNY": 10**12}}  # the bench orders a lot
        async with ShopBackend(url, database=database, policy=PolicyBook(devices={OTHER: roomy})) as shop:
            key = await asyncio.to_thread(shop.provision, OTHER)
            key.save(Path(tmp) / "other.pem")
            other = await _child(url, "orderer", str(Path(tmp) / "other.pem"), str(every), str(seconds))
            flooder: asyncio.subprocess.Process | None = None
            try:
                if await _line(other, 60) != b"ready":
                    raise BusError("the ordering device did not start")
                await asyncio.sleep(0.5)
                before = _rss_mb()
                flooder = await _child(url, "flooder", str(seconds), str(most), nice=True)
                if await _line(flooder, 60) != b"ready":
                    raise BusError("the flooding device did not start")
                assert flooder.stdin is not None
                assert other.stdin is not None
                flooder.stdin.write(b"go\n")
                await asyncio.sleep(0.3)  # the flood is under way before the other device starts
                other.stdin.write(b"go\n")
                peak = before
                reading = asyncio.ensure_future(_line(other, seconds + 120))
                while not reading.done():
                    peak = max(peak, _rss_mb())
                    await asyncio.wait([reading], timeout=0.2)
                ordered = json.loads(reading.result())
                flooded = json.loads(await _line(flooder, seconds + 60))
                after = _rss_mb()
                open_checkouts = sum(
                    1 for (d, _), s in shop.gateway.sessions.items() if d == FLOODER and s.state in OPEN
                )
            finally:
                for child in (other, flooder):
                    if child is not None and child.returncode is None:
                        child.terminate()
                        await child.wait()
        with contextlib.closing(sqlite3.connect(database)) as conn:
            records = conn.execute(
                "SELECT count(*) FROM audit WHERE json_extract(body, '$.device_id') = ?", (FLOODER,)
            ).fetchone()[0]
    during = sorted(ordered["during_ms"])
    return {
        "other_device_p95_ms": _percentile(during, 0.95),
        "other_device_p50_ms": _percentile(during, 0.50),
        "other_device_max_ms": round(max(during), 1) if during else None,
        "other_device_orders": ordered["orders"],
        "other_device_failures": ordered["failures"],
        "quiet_p95_ms": _percentile(sorted(ordered["quiet_ms"]), 0.95),
        "flood_sent": flooded["sent"],
        "flood_refused": flooded["errors"],
        "flood_seconds": flooded["seconds"],
        "flood_open_checkouts": open_checkouts,
        "flood_audit_records": records,
        "gateway_rss_mb_before": before,
        "gateway_rss_mb_peak": peak,
        "gateway_rss_mb_after": after,
    }


async def run_bench_flood(
    seconds: float = 20.0, most: int = 400_000, every: float = 2.5, broker: BrokerUrl | str = "mosquitto"
) -> dict[str, Any]:
    """One device floods for up to `seconds` (and `most` messages) while another orders every `every` seconds."""
    if broker == "embedded":
        async with EmbeddedBroker() as embedded:
            report = await _measure(embedded.url, seconds, most, every)
    elif broker == "mosquitto":
        async with MosquittoServer() as server:
            report = await _measure(server.url, seconds, most, every)
    else:
        report = await _measure(BrokerUrl.parse(broker) if isinstance(broker, str) else broker, seconds, most, every)
    return {"broker": broker if broker in ("embedded", "mosquitto") else "url", **report, "cpus": os.cpu_count()}


# the children -------------------------------------------------------------------------------


def _url(text: str) -> BrokerUrl:
    """The parent's broker, with the password it handed over in the environment."""
    url = broker_url(text)
    assert url is not None
    return url


async def _orderer(url: str, key_path: str, every: float, seconds: float) -> None:
    """Order (ask, confirm) once to warm up, a few times quietly, then once told to go every `every`
    seconds (an honest pace: within the gateway's default limits) for `seconds`."""
    key = SigningKey.load(key_path)
    quiet: list[float] = []
    during: list[float] = []
    failures: Counter[str] = Counter()
    async with DeviceClient(_url(url), OTHER, key=key) as device:

        async def order(into: list[float]) -> bool:
            """One order; each exchange's time goes `into` (a failed one's too, up to its failure)."""
            started = time.perf_counter()
            try:
                offer = await device.ask("buy a bottle of milk", timeout=30)
                into.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                result = await device.answer(offer, Decision.CONFIRM, modality=Modality.VOICE, timeout=30)
                into.append((time.perf_counter() - started) * 1000)
                return result.outcome == "ordered"
            except DeviceSdkError as exc:
                into.append((time.perf_counter() - started) * 1000)
                failures[str(exc.code)] += 1
                return False

        await order([])
        for _ in range(5):
            await order(quiet)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        done, started = 0, time.monotonic()
        while time.monotonic() - started < seconds:
            began = time.monotonic()
            done += await order(during)
            await asyncio.sleep(max(0.0, every - (time.monotonic() - began)))
    print(json.dumps({"orders": done, "quiet_ms": quiet, "during_ms": during, "failures": failures}), flush=True)


async def _flooder(url: str, seconds: float, most: int) -> None:
    """Send requests, pings, wakes, audio and bogus confirmations as fast as the broker takes them."""
    topics = Topics()
    up, audio = topics.device_up(FLOODER), topics.device_audio(FLOODER)
    errors: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    async with MqttBus(_url(url), f"flooder-{os.getpid()}") as bus:
        down = await bus.subscribe(topics.device_down(FLOODER), maxsize=1_000_000)

        async def count() -> None:
            async for received in down:
                with contextlib.suppress(DeviceSdkError):
                    message = decode(received.payload)
                    if isinstance(message, Error):
                        errors[str(message.code)] += 1

        counting = asyncio.ensure_future(count())
        await bus.publish(up, Ping(seq=0).encode())  # the gateway claims the device
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        pcm = bytes(AUDIO_PCM)
        started, stream, seq = time.monotonic(), 0, 0
        kinds = ("request", "ping", "wake", "audio", "audio", "confirmation", "ping")
        for n in range(most):
            if n % 256 == 0 and time.monotonic() - started > seconds:
                break
            kind = kinds[n % len(kinds)]
            if kind == "request":
                payload = AgentRequest(request_id=f"fr{n}", device_id=FLOODER, session_id=f"fs{n}", text="buy milk")
                await bus.publish(up, payload.encode(), qos=0)
            elif kind == "ping":
                await bus.publish(up, Ping(seq=n).encode(), qos=0)
            elif kind == "wake":
                wake = Wake(wake_id=f"fw{n}", session_id=f"fws{n}", confidence=0.9, energy_db=-20.0)
                await bus.publish(up, wake.encode(), qos=0)
            elif kind == "audio":
                if seq % 500 == 0:
                    stream, seq = (stream + 1) & 0xFFFF, 0
                    await bus.publish(up, AudioStart(session_id=f"fa{stream}", stream=stream).encode(), qos=0)
                chunk = AudioChunk(stream, seq, seq * AUDIO_PCM // 2, pcm)
                await bus.publish(audio, chunk.encode(), qos=0)
                seq += 1
            else:
                bogus = ConfirmationResult(
                    session_id=f"fs{n}", checkout_id=f"fc{n}", checkout_hash="0" * 64, decision=Decision.CONFIRM,
                    modality=Modality.VOICE, display_digest="0" * 64,
                )  # fmt: skip
                await bus.publish(up, bogus.encode(), qos=0)
            sent[kind] += 1
            if n % 200 == 199:  # a PUBACK after everything before it: the flooder's own queue stays bounded
                await bus.publish(up, Ping(seq=n).encode(), qos=1, timeout=30)
        elapsed = time.monotonic() - started
        await asyncio.sleep(2.0)  # the last refusals arrive
        counting.cancel()
    print(json.dumps({"sent": sent, "errors": errors, "seconds": round(elapsed, 2)}), flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["orderer"]:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_orderer(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])))
elif __name__ == "__main__" and sys.argv[1:2] == ["flooder"]:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_flooder(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
