"""The examples run as documented."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_sdk.bus.mosquitto import MosquittoServer, free_port

EXAMPLES = Path(__file__).parent.parent / "examples"


@contextlib.asynccontextmanager
async def serving(*backend_args: str) -> AsyncIterator[None]:
    """`device-sdk serve` as its own process, once it says it is serving; stopped on the way out."""
    serve = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "device_sdk.cli", "serve", *backend_args, stdout=subprocess.PIPE
    )
    try:
        assert serve.stdout is not None
        assert (await asyncio.wait_for(serve.stdout.readline(), 30)).startswith(b"serving devices on")
        yield
    finally:
        serve.terminate()
        await serve.wait()


def test_custom_agent_example() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "custom_agent.py")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "1 cup of Flat white, from Corner Cafe, 28.00 CNY." in done.stdout
    assert "outcome: ordered ord_" in done.stdout


async def test_speaker_device_example_against_device_sdk_serve(
    mosquitto: MosquittoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    made = await asyncio.create_subprocess_exec(sys.executable, "-m", "device_sdk.cli", "keys", "create", "my-speaker")
    assert await made.wait() == 0
    assert (tmp_path / "keys" / "my-speaker.pem").stat().st_mode & 0o777 == 0o600
    for backend_args in (["--broker", str(mosquitto.url)], ["--port", str(port := free_port())]):
        url = str(mosquitto.url) if "--broker" in backend_args else f"mqtt://127.0.0.1:{port}"
        async with serving(*backend_args):
            device = await asyncio.create_subprocess_exec(
                sys.executable, str(EXAMPLES / "speaker_device.py"), "--broker", url, "--say", "buy two bags of rice",
                "--reply", "hmm", "--reply", "yes", stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(device.communicate(), 60)
            assert device.returncode == 0, out
            assert b"2 bags of Jasmine rice, 5 kg" in out
            assert b"Sorry, I did not get that" in out
            assert b"outcome: ordered, order ord_" in out


async def test_documented_glasses_bridge_against_device_sdk_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/ble.md, "The bridge as a process": keys create, serve, firmware-bridge run --simulated."""
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    made = await asyncio.create_subprocess_exec(sys.executable, "-m", "device_sdk.cli", "keys", "create", "glasses-1",
                                                "--kind", "glasses")  # fmt: skip
    assert await made.wait() == 0
    port = free_port()
    async with serving("--port", str(port)):
        bridge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firmware_bridge", "run", "--simulated", "--broker", f"mqtt://127.0.0.1:{port}",
            "--sessions", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(bridge.communicate(), 90)
        assert bridge.returncode == 0, err
        assert b"session: tap -> ordered (ord_" in out


async def test_documented_phone_oem_sequence_against_device_sdk_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/phone_oem.py's docstring: keys create, the OEM key, serve, firmware-bridge phone, ask."""
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    made = await asyncio.create_subprocess_exec(sys.executable, "-m", "device_sdk.cli", "keys", "create", "phone-1",
                                                "--kind", "phone")  # fmt: skip
    assert await made.wait() == 0
    oem = await asyncio.create_subprocess_exec(sys.executable, str(EXAMPLES / "phone_oem.py"), "keys")
    assert await oem.wait() == 0 and (tmp_path / "oem-keys.json").exists()
    port, bridge_port, sheet_port = free_port(), free_port(), free_port()
    async with serving("--port", str(port)):
        bridge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "firmware_bridge", "phone", "--broker", f"mqtt://127.0.0.1:{port}",
            "--oem-keys", "oem-keys.json", "--listen", f"127.0.0.1:{bridge_port}",
            "--sheet-url", f"http://127.0.0.1:{sheet_port}/sheet", stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            assert bridge.stderr is not None
            assert b"takes intents" in await asyncio.wait_for(bridge.stderr.readline(), 30)
            ask = await asyncio.create_subprocess_exec(
                sys.executable, str(EXAMPLES / "phone_oem.py"), "ask", "--say", "buy two packs of AA batteries",
                "--tap", "confirm", "--bridge", f"http://127.0.0.1:{bridge_port}/v1/intents",
                "--sheet-port", str(sheet_port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
            out, err = await asyncio.wait_for(ask.communicate(), 60)
        finally:
            bridge.terminate()
            await bridge.wait()
    assert ask.returncode == 0, err
    assert b"2 x AA batteries, pack of 4 (HomeGoods Direct) 25.80 CNY" in out
    assert b"HTTP 200: ordered ord_" in out
