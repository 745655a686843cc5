"""The maker console in a real headless Chromium (Debian's `chromium`, driven over the DevTools
protocol): the page opens, an order runs, and the page shows the device, the session's timeline, the
read-back, the order and its verified audit trail; it has no control and the server no route that writes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.url import BrokerUrl
from device_sdk.device.client import DeviceClient
from device_sdk.platform.provisioning.broker_config import ROLES, Role
from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.fields import Outcome
from device_sdk.protocol.topics import Topics
from simulators.console import Console, watched
from simulators.glasses_demo import run_glasses
from simulators.scenario import ShopBackend
from simulators.speaker import SimulatedSpeaker


def chromium_or_skip() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is missing in CI: ./dev test installs it with apt-get")
    pytest.skip("chromium is not installed (./dev test installs it: apt-get install chromium)")


class Browser:
    """One headless Chromium and its first page, over the DevTools protocol's WebSocket."""

    def __init__(self, executable: str, profile: Path) -> None:
        self.executable, self.profile = executable, profile
        self._ids = 0

    async def __aenter__(self) -> Browser:
        self.proc = await asyncio.create_subprocess_exec(
            self.executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "--window-size=1200,900", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        async with asyncio.timeout(60):
            while not (found := re.search(rb"ws://127\.0\.0\.1:(\d+)/", await self.proc.stderr.readline())):
                pass
        self._drain = asyncio.create_task(self.proc.stderr.read())
        self.http = aiohttp.ClientSession()
        async with self.http.get(f"http://127.0.0.1:{int(found.group(1))}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()
        await self.http.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        await self.proc.wait()
        await asyncio.gather(self._drain, return_exceptions=True)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._ids += 1
        await self.ws.send_json({"id": self._ids, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == self._ids:
                assert "error" not in message, message
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer["result"].get("value")  # none while the page is still loading

    async def wait_until(self, expression: str, limit: float = 60.0) -> None:
        """Until `expression` is true in the page (polled; fails after `limit` seconds)."""
        async with asyncio.timeout(limit):
            while not await self.evaluate(expression):  # noqa: ASYNC110 - polling the page
                await asyncio.sleep(0.1)

    async def wait_for_text(self, needle: str, limit: float = 60.0) -> str:
        """The page's text once it contains `needle` (polled; fails after `limit` seconds)."""
        async with asyncio.timeout(limit):
            while needle not in (text := str(await self.evaluate("document.body?.innerText ?? ''"))):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        return str(text)


async def test_the_page_shows_an_order_as_it_runs_with_its_audit_trail(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    store = tmp_path / "shop.db"
    async with (
        EmbeddedBroker() as broker,
        ShopBackend(broker.url, shared=False, database=store) as shop,
        Console(broker.url, audit=store) as console,
        Browser(chromium, tmp_path / "profile") as browser,
    ):
        await browser.call("Page.navigate", url=console.url)
        await browser.wait_for_text("device-sdk console")
        key = await asyncio.to_thread(shop.provision, "speaker-1")
        async with DeviceClient(broker.url, "speaker-1", key=key, room="kitchen") as device:
            await browser.wait_for_text("speaker-1")  # the device appears as it comes online
            run = await SimulatedSpeaker(device).run("buy two packs of AA batteries", ["confirm"])
            assert run.result is not None and run.result.outcome is Outcome.ORDERED and run.offer is not None
            text = await browser.wait_for_text("audit log intact")
        shot = await browser.call("Page.captureScreenshot", format="png")
        (tmp_path / "console.png").write_bytes(base64.b64decode(shot["data"]))
        controls = await browser.evaluate("document.querySelectorAll('button, form, input, select, textarea').length")
        async with aiohttp.ClientSession() as http, http.post(console.url + "events", data=b"confirm") as response:
            assert response.status == 405  # nothing on the console writes
    assert f"session {run.offer.session_id}" in text
    for seen in ("kitchen", "online", "agent.request", "confirmation.request", "confirmation.result", "order.result"):
        assert seen in text, seen
    assert run.offer.readback.splitlines()[0] in text  # the read-back as the speaker said it
    assert run.result.order_id is not None and run.result.order_id in text
    assert "#" in text and '"kind"' not in text  # the trail's records, each with its seq
    assert controls == 0
    assert (tmp_path / "console.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_console_listens_on_loopback_only() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        Console(BrokerUrl("127.0.0.1", 1883), host="0.0.0.0")


async def test_the_page_shows_the_lens_card_of_glasses_as_rendered(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    async with (
        EmbeddedBroker() as broker,
        Console(broker.url) as console,
        Browser(chromium, tmp_path / "profile") as browser,
    ):
        await browser.call("Page.navigate", url=console.url)
        await browser.wait_for_text("device-sdk console")
        demo = await run_glasses(broker=broker.url, tap="confirm")  # its own backend, on the console's broker
        assert demo.run.result is not None and demo.run.result.outcome is Outcome.ORDERED
        await browser.wait_for_text("order.result")
        await browser.wait_until("[...document.images].some(i => i.complete && i.naturalWidth > 0)")
        widths = await browser.evaluate("[...document.querySelectorAll('img.card')].map(i => i.naturalWidth)")
        text = await browser.wait_for_text("glasses-1")
    assert widths == [640]  # the card as the lens shows it (640x400)
    assert "glasses" in text and "audit: no audit log given" in text


def test_the_console_reads_what_a_monitor_may_and_never_a_pin_audio_image_or_intent() -> None:
    from paho.mqtt.client import topic_matches_sub

    topics = Topics()
    filters = watched(topics)
    hidden = [topics.device_step_up("s-1"), topics.device_audio("s-1"), topics.device_image("s-1"),
              topics.oem_intent("oem-1", "p-1")]  # fmt: skip
    shown = [topics.device_up("s-1"), topics.device_down("s-1"), topics.device_status("s-1"), topics.agent_request(),
             topics.agent_reply("gw-1"), topics.oem_reply("oem-1", "p-1"), topics.errors()]  # fmt: skip
    assert not [(f, t) for f in filters for t in hidden if topic_matches_sub(f, t)]
    assert all(any(topic_matches_sub(f, t) for f in filters) for t in shown)
    monitor = {rule.topic for rule in ROLES[Role.MONITOR]}
    assert {f.removeprefix(f"{topics.base}/") for f in filters} <= monitor
