"""`device-sdk conformance` against the simulated devices on a real Mosquitto: every kind passes every
MUST, each broken device fails the one requirement it breaks and no other, a device whose test mode
is off is checked where it needs no help, and the report's requirements are the protocol's."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.conformance.requirements import BY_ID, REQUIREMENTS, musts_held
from device_sdk.conformance.run import ConformanceRun
from device_sdk.consent.keys import SigningKey, b64url
from device_sdk.protocol.fields import DeviceKind
from simulators.advertised import AdvertisedDevices
from simulators.conformance_devices import FLAWS, TestModeDevice

DOCS = Path(__file__).resolve().parent.parent / "docs"
BROKEN = {
    "no-will": "R-WILL",
    "stale-hash": "R-MANDATE-HASH",
    "signs-unshown": "R-CONFIRM-DIGEST",
    "trusts-readback": "R-REFUSE-TAMPERED",
    "signs-expired": "R-REFUSE-EXPIRED",
    "signs-decline": "R-DECLINE-NO-MANDATE",
    "bad-audio": "R-AUDIO-FRAMING",
}
"""Each broken simulated device, and the one requirement it breaks."""


def failed(report: dict[str, Any]) -> set[str]:
    return {r["id"] for r in report["requirements"] if r["result"] == "fail"}


def ran(report: dict[str, Any]) -> int:
    return sum(r["result"] != "skipped" for r in report["requirements"])


async def cli(*args: str) -> tuple[int, str]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "device_sdk.cli", "conformance", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await child.communicate()
    assert child.returncode in (0, 1), err.decode()
    return child.returncode, out.decode()


def test_every_requirement_is_defined_in_the_protocol_with_its_level() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    section = text.split("\n## Requirements\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(R-[A-Z-]+)` \| (MUST|SHOULD) \|", section, re.MULTILINE))
    assert rows == {r.id: r.level for r in REQUIREMENTS}
    assert set(FLAWS) == set(BROKEN) and set(BROKEN.values()) <= set(BY_ID)


def test_the_glasses_report_in_the_docs_is_of_the_current_requirements() -> None:
    report = json.loads((DOCS / "conformance-glasses.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in report["requirements"]] == [r.id for r in REQUIREMENTS]
    assert report["kind"] == "glasses" and report["failed"] == 0 and musts_held(report)
    assert report["passed"] + report["skipped"] == len(REQUIREMENTS)


async def started_late(url: str, device_id: str) -> dict[str, Any]:
    """A run begun before its device starts: it takes the status when it comes, and checks it is kept."""
    run = asyncio.ensure_future(ConformanceRun(url, device_id).run())
    await asyncio.sleep(1.0)
    async with TestModeDevice(url, device_id, DeviceKind.GLASSES):
        return await run


async def test_simulated_devices_pass_and_broken_ones_fail_exactly_what_they_break(
    mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    url = mosquitto.url
    async with (
        AdvertisedDevices(url, 3, interfaces=["127.0.0.1"], prefix="good") as good,
        TestModeDevice(url, "quiet-speaker", DeviceKind.SPEAKER, test_mode=False) as quiet,
    ):
        speaker, glasses, phone = good.sims
        assert [s.kind for s in good.sims] == [DeviceKind.SPEAKER, DeviceKind.GLASSES, DeviceKind.PHONE]
        assert speaker.device.info.public_key == b64url(speaker._key.public.raw)
        broken = [TestModeDevice(url, f"broken-{flaw}", DeviceKind.SPEAKER, flaw=flaw) for flaw in BROKEN]
        for device in broken:
            await device.__aenter__()
        try:
            key_file = tmp_path / "glasses.pub"
            key_file.write_text(glasses.device.info.public_key or "", encoding="utf-8")
            runs = [ConformanceRun(url, s.device_id).run() for s in (speaker, phone, quiet, *broken)]
            wrong_key = tmp_path / "wrong.pub"
            wrong_key.write_text(b64url(SigningKey.generate().public.raw), encoding="utf-8")
            reports = await asyncio.gather(
                cli("--broker", str(url), "--device-id", glasses.device_id, "--device-key", str(key_file), "--json"),
                *runs,
                started_late(str(url), "late-glasses"),
            )
            # the wrong key runs after the broken device's own run: one run at a time drives a device
            wrong_code, wrong_out = await cli("--broker", str(url), "--device-id", "broken-no-will",
                                              "--device-key", str(wrong_key), "--json")  # fmt: skip
        finally:
            for device in broken:
                await device.__aexit__(None, None, None)
    (code, out), speaker_report, phone_report, quiet_report, *broken_reports, late_report = reports

    glasses_report = json.loads(out)
    assert code == 0 and glasses_report["device_id"] == glasses.device_id and glasses_report["kind"] == "glasses"
    for report in (glasses_report, speaker_report, phone_report, late_report):
        assert failed(report) == set(), report
        assert report["passed"] + report["failed"] + report["skipped"] == len(REQUIREMENTS)
        assert {r["level"] for r in report["requirements"]} == {"MUST", "SHOULD"}
    assert ran(speaker_report) == len(REQUIREMENTS) >= 10
    assert [r["id"] for r in phone_report["requirements"] if r["result"] == "skipped"] == ["R-AUDIO-FRAMING"]
    assert speaker.sessions[:3] == ["ordered", "declined", "not_confirmed"]

    # the test mode off: the device is checked where it needs no help, and nothing of it fails
    assert failed(quiet_report) == set() and musts_held(quiet_report)
    assert {r["id"] for r in quiet_report["requirements"] if r["result"] == "pass"} == {
        "R-STATUS-RETAINED", "R-INFO-RETAINED", "R-INFO-PUBLIC-KEY", "R-HEARTBEAT", "R-HEARTBEAT-INTERVAL",
    }  # fmt: skip
    assert quiet.sessions == []

    for (flaw, rid), report in zip(BROKEN.items(), broken_reports, strict=True):
        assert failed(report) == {rid}, (flaw, report)
        assert not musts_held(report) and ran(report) >= 20
    # a key other than the device's: its mandates do not verify, and nothing else changes; exit 1
    late = json.loads(wrong_out)
    assert wrong_code == 1 and failed(late) == {"R-MANDATE-SIGNED", "R-WILL"}
    assert [r["result"] for r in late["requirements"] if r["id"] in ("R-MANDATE-HASH", "R-MANDATE-TERMS")] == [
        "skipped", "skipped",
    ]  # fmt: skip
