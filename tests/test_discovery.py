"""Zeroconf discovery on 127.0.0.1: TXT records, advertising, browsing, the broker, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo

from device_sdk.bus.mosquitto import MosquittoServer
from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.discovery.advertise import Advertiser, BrokerAdvertiser, DeviceAdvertiser, open_zeroconf
from device_sdk.discovery.browse import Browser, Change, ChangeKind, find_broker
from device_sdk.discovery.listing import run_discover
from device_sdk.discovery.records import (
    DEVICE_TYPE,
    GatewayInfo,
    broker_url,
    device_info_from_txt,
    device_txt,
    gateway_info_from_txt,
    gateway_txt,
)
from device_sdk.protocol.errors import BusError, ConfigError, ErrorCode, ProtocolError
from device_sdk.protocol.fields import Capability, DeviceKind
from device_sdk.protocol.messages import DeviceInfo, decode
from device_sdk.protocol.topics import Topics
from simulators.advertised import AdvertisedDevices
from simulators.scenario import ShopBackend
from tests.conftest import EmbeddedRestartable

LO = ["127.0.0.1"]


def unique(prefix: str) -> str:
    """Names of their own for each test, so no test sees another's services."""
    return f"{prefix}-{secrets.token_hex(3)}"


def txt_of(properties: dict[str, str]) -> dict[bytes, bytes | None]:
    """Properties as a browser reads them: through the TXT wire format and back."""
    wire = ServiceInfo(DEVICE_TYPE, f"x.{DEVICE_TYPE}", properties=properties).text
    return ServiceInfo(DEVICE_TYPE, f"x.{DEVICE_TYPE}", properties=wire).properties


async def until(browser: Browser, done: Callable[[Browser], bool], timeout: float = 8.0) -> list[Change]:
    """The changes seen until `done(browser)` holds; fails after `timeout` seconds."""
    seen = [change async for change in browser.changes(0.05)]  # those already queued
    if done(browser):
        return seen
    async with contextlib.aclosing(browser.changes(timeout)) as changes:
        async for change in changes:
            seen.append(change)
            if done(browser):
                return seen
    raise AssertionError(f"not seen within {timeout} s; changes: {seen}; found: {list(browser.found)}")


def devices_found(browser: Browser) -> dict[str, DeviceInfo]:
    return {f.device.device_id: f.device for f in browser.found.values() if f.device is not None}


# TXT records --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "info",
    [
        DeviceInfo(device_id="speaker-1"),
        DeviceInfo(
            device_id="kitchen.speaker_2",
            kind=DeviceKind.SPEAKER,
            capabilities=[Capability.MIC, Capability.AUDIO_OUT],
            firmware="1.4.2+build.7",
            room="kitchen",
        ),
        DeviceInfo(device_id="g", kind=DeviceKind.GLASSES, capabilities=list(Capability), protocol=255),
    ],
)
def test_device_txt_round_trips_through_the_wire_format(info: DeviceInfo) -> None:
    assert device_info_from_txt(txt_of(device_txt(info))) == info


def test_device_txt_keys_are_the_documented_ones() -> None:
    info = DeviceInfo(
        device_id="speaker-1", kind=DeviceKind.SPEAKER, capabilities=[Capability.MIC, Capability.TEXT], firmware="2.0"
    )
    assert device_txt(info) == {
        "txtvers": "1",
        "id": "speaker-1",
        "kind": "speaker",
        "caps": "mic,text",
        "proto": "1",
        "fw": "2.0",
    }


GOOD = {b"txtvers": b"1", b"id": b"speaker-1", b"kind": b"speaker", b"caps": b"mic", b"proto": b"1"}


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({b"id": None}, ErrorCode.BAD_MESSAGE, "'id' has no value"),
        ({b"kind": b"toaster"}, ErrorCode.BAD_MESSAGE, "kind"),
        ({b"id": b"a/b"}, ErrorCode.BAD_MESSAGE, "device_id"),
        ({b"txtvers": b"2"}, ErrorCode.UNSUPPORTED_VERSION, "version"),
        ({b"proto": b"one"}, ErrorCode.BAD_MESSAGE, "not a number"),
        ({b"proto": b"300"}, ErrorCode.BAD_MESSAGE, "protocol"),
        ({b"caps": b"mic,Bad Cap"}, ErrorCode.BAD_MESSAGE, "capability"),
        ({b"fw": b"\xff\xfe"}, ErrorCode.BAD_MESSAGE, "UTF-8"),
        ({b"room": b"\xc3"}, ErrorCode.BAD_MESSAGE, "UTF-8"),
        ({b"fw": b"line\nbreak"}, ErrorCode.BAD_MESSAGE, "firmware"),
    ],
)
def test_a_bad_device_txt_is_a_protocol_error(change: dict[bytes, bytes | None], code: ErrorCode, words: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        device_info_from_txt({**GOOD, **change})
    assert caught.value.code is code and words in caught.value.text


@pytest.mark.parametrize("missing", [b"id", b"txtvers"])
def test_a_device_txt_without_a_required_key_is_refused(missing: bytes) -> None:
    with pytest.raises(ProtocolError, match=missing.decode()):
        device_info_from_txt({k: v for k, v in GOOD.items() if k != missing})


def test_the_device_txt_parser_tolerates_what_a_newer_device_may_say() -> None:
    info = device_info_from_txt(
        {b"TxtVers": b"1", b"ID": b"speaker-1", b"id": b"other", b"caps": b"mic,hologram,text", b"new-key": b"\xff"}
    )
    # keys are case-insensitive, the first of a repeated key counts, unknown keys and capabilities are dropped
    assert info == DeviceInfo(device_id="speaker-1", capabilities=[Capability.MIC, Capability.TEXT])


def test_gateway_txt_round_trips_and_never_carries_credentials() -> None:
    info = GatewayInfo("gw-1", BrokerUrl("broker.lan", 8883, "gw-1", "s3cret", tls=True))
    txt = gateway_txt(info)
    assert txt == {"txtvers": "1", "id": "gw-1", "proto": "1", "broker": "mqtts://broker.lan:8883"}
    assert "s3cret" not in json.dumps(txt)
    assert gateway_info_from_txt(txt_of(txt)) == GatewayInfo("gw-1", BrokerUrl("broker.lan", 8883, tls=True))
    with pytest.raises(ProtocolError, match="broker"):
        gateway_info_from_txt({**txt_of(txt), b"broker": b"http://x"})


def test_a_broker_service_becomes_a_url() -> None:
    assert broker_url(["fe80::1", "192.0.2.7"], 1883, {}) == BrokerUrl("192.0.2.7", 1883)
    assert broker_url(["192.0.2.7"], 8883, {}) == BrokerUrl("192.0.2.7", 8883, tls=True)
    assert broker_url(["192.0.2.7"], 1884, {b"tls": b"1"}).tls
    assert not broker_url(["192.0.2.7"], 1884, {b"tls": b"0"}).tls
    with pytest.raises(ProtocolError):
        broker_url([], 1883, {})


KEYS = [b"txtvers", b"id", b"kind", b"caps", b"proto", b"fw", b"room", b"broker", b"ID"]
VALUES = [b"1", b"2", b"speaker", b"glasses", b"mic,text", b"mic,,", b"speaker-1", b"a/b", b"255", b"mqtt://h:1"]


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(KEYS) | st.binary(max_size=8),
        st.none() | st.sampled_from(VALUES) | st.binary(max_size=40),
        max_size=9,
    )
)
def test_fuzzed_txt_records_parse_or_are_protocol_errors(properties: dict[bytes, bytes | None]) -> None:
    for parse in (device_info_from_txt, gateway_info_from_txt):
        try:
            parsed: object = parse(properties)
        except ProtocolError as exc:
            parsed = exc.code
        assert isinstance(parsed, DeviceInfo | GatewayInfo) or parsed in (
            ErrorCode.BAD_MESSAGE,
            ErrorCode.UNSUPPORTED_VERSION,
        )


# advertising and browsing on 127.0.0.1 ------------------------------------------------------


async def test_advertised_devices_are_found_and_their_txt_mirrors_the_bus(embedded: EmbeddedRestartable) -> None:
    prefix = unique("sim")
    broken = unique("broken")
    async with (
        AdvertisedDevices(embedded.url, 2, interfaces=LO, prefix=prefix, room="kitchen") as sim,
        Advertiser(DEVICE_TYPE, broken, {"txtvers": "1", "id": broken, "kind": "toaster"}, interfaces=LO),
        Browser(interfaces=LO) as browser,
    ):
        ids = {d.device_id for d in sim.devices}
        changes = await until(browser, lambda b: ids <= set(devices_found(b)) and bool(b.refused))
        found = devices_found(browser)
        speaker, glasses = (found[d.device_id] for d in sim.devices)
        assert (speaker.kind, glasses.kind) == (DeviceKind.SPEAKER, DeviceKind.GLASSES)
        assert Capability.CAMERA in glasses.capabilities and Capability.CAMERA not in speaker.capabilities
        assert speaker.firmware == "sim-0.1" and speaker.room == glasses.room == "kitchen"
        for item in browser.found.values():
            if item.device is not None and item.device.device_id in ids:
                assert item.addresses == ("127.0.0.1",) and item.instance == item.device.device_id
        # the service with a bad TXT record is reported, not found, and nothing crashed
        assert broken not in found
        refusal = browser.refused[f"{broken}.{DEVICE_TYPE}"]
        assert isinstance(refusal, ProtocolError) and refusal.code is ErrorCode.BAD_MESSAGE
        assert any(c.kind is ChangeKind.REFUSED and c.name.startswith(broken) and c.error is refusal for c in changes)

        # the mirror: the retained device.info on the bus is what the TXT record says
        async with MqttBus(embedded.url, unique("mirror")) as bus:
            inbox = await bus.subscribe(Topics().all_devices("info"))
            on_bus: dict[str, DeviceInfo] = {}
            while not ids <= set(on_bus):
                message = decode((await inbox.get(timeout=5.0)).payload)
                assert isinstance(message, DeviceInfo)
                on_bus[message.device_id] = message
        for device in sim.devices:
            assert on_bus[device.device_id] == found[device.device_id] == device.info

        # `device-sdk discover`'s table, live: redrawn in place, with every device
        out, err = io.StringIO(), io.StringIO()
        assert await run_discover(1.5, LO, live=True, out=out, err=err) == 0
        frames = out.getvalue().split("\x1b[J")  # each drawing erases the one before
        assert len(frames) >= 3 and frames[-1].endswith(" found\n")
        assert all(device_id in frames[-1] for device_id in ids) and broken not in frames[-1]
        assert f"skipped {broken}" in err.getvalue()


async def test_updates_and_goodbyes_are_reported() -> None:
    info = DeviceInfo(device_id=unique("speaker"), kind=DeviceKind.SPEAKER, firmware="1.0")
    async with Browser(interfaces=LO) as browser:
        async with DeviceAdvertiser(info, interfaces=LO) as advertiser:
            await until(browser, lambda b: info.device_id in devices_found(b))
            assert devices_found(browser)[info.device_id].firmware == "1.0"
            await advertiser.update(info.model_copy(update={"firmware": "1.1"}))
            changes = await until(browser, lambda b: devices_found(b)[info.device_id].firmware == "1.1")
            assert changes[-1].kind is ChangeKind.UPDATED
        changes = await until(browser, lambda b: info.device_id not in devices_found(b))
        gone = changes[-1]
        assert gone.kind is ChangeKind.REMOVED and gone.found is not None and gone.found.device is not None
        assert gone.found.device.firmware == "1.1"


async def test_a_taken_name_is_a_config_error_and_the_holder_keeps_it() -> None:
    info = DeviceInfo(device_id=unique("speaker"), firmware="first")
    async with DeviceAdvertiser(info, interfaces=LO) as first:
        with pytest.raises(ConfigError, match="taken") as caught:
            async with DeviceAdvertiser(info.model_copy(update={"firmware": "second"}), interfaces=LO):
                pass
        assert caught.value.code is ErrorCode.BAD_CONFIG and info.device_id in caught.value.text
        async with Browser(interfaces=LO) as browser:
            await until(browser, lambda b: info.device_id in devices_found(b))
            await asyncio.sleep(0.5)  # a late record of the second one would show as an update
            assert devices_found(browser)[info.device_id].firmware == "first"
        assert first.info.port == 0


async def test_a_name_taken_in_the_same_responder_is_a_config_error() -> None:
    info = DeviceInfo(device_id=unique("speaker"))
    async with open_zeroconf(LO) as zc, DeviceAdvertiser(info, interfaces=LO, zc=zc):
        with pytest.raises(ConfigError, match="taken"):
            async with DeviceAdvertiser(info, interfaces=LO, zc=zc):
                pass


def test_names_that_cannot_be_dns_labels_are_refused() -> None:
    with pytest.raises(ConfigError, match="63 bytes"):
        DeviceAdvertiser(DeviceInfo(device_id="x" * 64), interfaces=LO)


# the broker ---------------------------------------------------------------------------------


@pytest.mark.mosquitto
async def test_find_broker_finds_an_advertised_mosquitto_and_the_backend_connects(mosquitto: MosquittoServer) -> None:
    async with BrokerAdvertiser(mosquitto.url, name=unique("mosquitto"), interfaces=LO):
        url = await find_broker(5.0, LO)
        assert url == mosquitto.url
        async with ShopBackend(url, gateway_id=unique("gw")) as backend:
            assert backend.gateway.bus.connected and backend.gateway.bus.url == mosquitto.url


async def test_find_broker_says_when_there_is_none() -> None:
    with pytest.raises(BusError, match=r"_mqtt\._tcp"):
        await find_broker(1.0, LO)


# the command line ---------------------------------------------------------------------------


async def cli(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    """The console script, run without blocking this event loop (its responder must answer)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "device_sdk.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_discover_json_lists_the_devices_this_process_advertises(embedded: EmbeddedRestartable) -> None:
    async with AdvertisedDevices(embedded.url, 2, interfaces=LO, prefix=unique("cli")) as sim:
        code, out, err = await cli("discover", "--json", "--timeout", "3", "--interface", "127.0.0.1")
    assert code == 0, err
    listed = {entry["device"]["device_id"]: entry for entry in json.loads(out) if entry["kind"] == "device"}
    for device in sim.devices:
        entry = listed[device.device_id]
        assert entry["service_type"] == DEVICE_TYPE and entry["addresses"] == ["127.0.0.1"]
        assert DeviceInfo.model_validate(entry["device"]) == device.info


async def test_discover_with_nothing_there_prints_an_empty_array() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert await run_discover(0.5, LO, as_json=True, out=out, err=err) == 0
    assert json.loads(out.getvalue()) == [] and "nothing found" in err.getvalue()


async def test_serve_finds_the_broker_and_advertises_its_gateway(embedded: EmbeddedRestartable, tmp_path: Path) -> None:
    def gateway_of(b: Browser) -> GatewayInfo | None:
        return next((f.gateway for f in b.found.values() if f.gateway and f.gateway.broker == embedded.url), None)

    async with (
        BrokerAdvertiser(embedded.url, name=unique("amqtt"), interfaces=LO),
        Browser(interfaces=LO) as browser,
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "device_sdk.cli", "serve", "--broker", "auto", "--advertise",
            "--interface", "127.0.0.1", "--audit", str(tmp_path / "shop.db"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "DEVICE_SDK_STATE": str(tmp_path)},
        )  # fmt: skip
        assert proc.stdout is not None
        said: list[str] = []
        try:
            async with asyncio.timeout(15.0):
                while not said or not said[-1].startswith("advertised as"):
                    said.append((await proc.stdout.readline()).decode())
                    assert said[-1], "serve ended early"
            await until(browser, lambda b: gateway_of(b) is not None)
            gateway = gateway_of(browser)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), 15.0)
        assert gateway is not None and gateway.protocol == 1
        await until(browser, lambda b: gateway_of(b) is None)  # Ctrl-C: its goodbye
        assert said[0].startswith(f"serving devices on {embedded.url} as gateway {gateway.gateway_id}"), err.decode()
        assert f"{gateway.gateway_id}._shop-gateway._tcp.local. on 127.0.0.1" in said[-1]
        assert proc.returncode in (0, 130)
