"""Broker security on a real Mosquitto started here with the configuration `provision` writes:
passwords, per-role ACLs, a TLS listener with the test CA, and the whole purchase flow on it."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from device_sdk.bus.mosquitto import MosquittoServer, free_port
from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.subscription import Received, Subscription
from device_sdk.bus.url import BrokerUrl
from device_sdk.cli import main
from device_sdk.consent.keys import SigningKey
from device_sdk.consent.mandate import unverified_claims
from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.audit import trail
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.registry import DeviceRegistry, KeyStatus
from device_sdk.platform.provisioning.broker_config import (
    ROLES,
    BrokerDir,
    BrokerSettings,
    BrokerUser,
    Registry,
    Role,
    hash_password,
    render_acl,
    roles_table,
    verify_password,
)
from device_sdk.platform.provisioning.provision import Credentials, provision, revoke
from device_sdk.platform.provisioning.tls import ensure_test_ca
from device_sdk.platform.timeline import Step, Timeline
from device_sdk.protocol.errors import BusError, ErrorCode, KeyStoreError, RemoteError, RequestTimeout
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, Outcome
from device_sdk.protocol.step_up import StepUp
from device_sdk.protocol.topics import Topics
from device_sdk.state import default_database, default_key_file
from firmware_bridge.intents import IntentVerifier, OemKeys
from firmware_bridge.phone import IntentBridge
from simulators.camera_files import SECRETS, phone_photo
from simulators.phone import SimulatedPhone
from simulators.phone_demo import send_intent
from simulators.photos import read_tag
from simulators.scenario import ShopBackend
from tests.conftest import mosquitto_or_skip

T = Topics()
USERS = {
    "dev-a": Role.DEVICE,
    "dev-b": Role.DEVICE,
    "gw-1": Role.GATEWAY,
    "agent-1": Role.AGENT,
    "mon": Role.MONITOR,
    "oem-x": Role.OEM,
}


@dataclass
class Secured:
    broker: BrokerDir
    server: MosquittoServer
    database: Path
    keys: Path
    creds: dict[str, Credentials]

    def url(self, name: str, *, tls: bool = True) -> BrokerUrl:
        return self.creds[name].broker_url(tls=tls)

    def bus(self, name: str, *, tls: bool = True) -> MqttBus:
        return MqttBus(self.url(name, tls=tls), f"{name}-{secrets.token_hex(3)}", connect_timeout=5.0)

    def provision(self, name: str, role: Role = Role.DEVICE, *, rotate: bool = False) -> Credentials:
        done = provision(
            name, role, directory=self.broker.path, database=self.database, key_out=self.keys / f"{name}.pem",
            rotate=rotate,
        )  # fmt: skip
        return done.credentials


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """Every user of USERS provisioned; Mosquitto running the generated mosquitto.conf (TLS and loopback)."""
    mosquitto_or_skip()
    settings = BrokerSettings(tls_port=free_port(), plain_port=free_port(), bind="127.0.0.1")
    broker, database, keys = BrokerDir(tmp_path / "broker"), tmp_path / "shop.db", tmp_path / "keys"
    creds = {}
    for name, role in USERS.items():
        kind = "phone" if name == "dev-b" else None  # dev-b confirms on a phone's sheet
        done = provision(
            name, role, directory=broker.path, database=database, key_out=keys / f"{name}.pem", settings=settings,
            kind=kind,
        )  # fmt: skip
        creds[name] = done.credentials
    async with MosquittoServer(config=broker.conf_file, port=settings.plain_port, tls_port=settings.tls_port) as server:
        yield Secured(broker, server, database, keys, creds)


async def until_marker(sub: Subscription, topic: str, marker: bytes, timeout: float = 5.0) -> list[Received]:
    """Everything `sub` receives up to and including `marker` on `topic`."""
    seen: list[Received] = []
    while not seen or (seen[-1].topic, seen[-1].payload) != (topic, marker):
        seen.append(await sub.get(timeout))
    return seen


async def refused_on_connect(url: BrokerUrl) -> BusError:
    bus = MqttBus(url, f"intruder-{secrets.token_hex(3)}", connect_timeout=10.0)
    with pytest.raises(BusError) as caught:
        await bus.connect()
    return caught.value


# the files, without a broker ---------------------------------------------------------------


@pytest.mark.mosquitto
def test_password_hash_is_mosquittos_own_format(tmp_path: Path) -> None:
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(passwd).exists():
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([passwd, "-c", "-b", str(tmp_path / "pw"), "alice", "s3cret"], check=True)
    theirs = (tmp_path / "pw").read_text().strip().split(":", 1)[1]
    _, kind, iterations, salt, _ = theirs.split("$")
    assert kind == "7"
    assert verify_password("s3cret", theirs)
    assert not verify_password("s3cret!", theirs)
    assert hash_password("s3cret", salt=base64.b64decode(salt), iterations=int(iterations)) == theirs


def test_acl_is_explicit_user_blocks_and_a_device_gets_exactly_its_topics(tmp_path: Path) -> None:
    registry = Registry()
    for name, role in USERS.items():
        registry.users[name] = BrokerUser(name, role, hash_password("x"), 0.0)
    acl = render_acl(registry)
    lines = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert lines[0].startswith("user "), "a topic line before the first user block applies to everyone"
    assert not any(line.startswith("pattern") or "%" in line for line in lines)
    block = acl.split("user dev-a\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert sorted(block) == sorted(
        [
            f"topic write {T.base}/device/dev-a/{leaf}"
            for leaf in ("status", "info", "up", "step_up", "audio", "image", "suggestion_result")
        ]
        + [f"topic read {T.base}/device/dev-a/{leaf}" for leaf in ("down", "controller", "suggestion")]
        + [f"topic read {T.base}/oem/+/dev-a/intent", f"topic write {T.base}/oem/+/dev-a/reply"]
    )


def test_docs_show_the_roles_table_of_the_code() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "security.md").read_text(encoding="utf-8")
    assert roles_table() in docs
    assert set(ROLES) == set(Role)


def test_broker_url_carries_the_ca_file() -> None:
    url = BrokerUrl.parse("mqtts://u:p%40ss@localhost:8883?ca=/etc/shop/ca.crt")
    assert (url.username, url.password, url.tls, url.ca) == ("u", "p@ss", True, "/etc/shop/ca.crt")
    assert "p@ss" not in str(url) and "p@ss" not in repr(url)
    for bad in ("mqtt://localhost?ca=/x", "mqtts://localhost?cafile=/x", "mqtts://localhost?ca=/x&ca=/y"):
        with pytest.raises(BusError):
            BrokerUrl.parse(bad)


def test_cli_provision_writes_private_files_and_registers_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path / "state"))
    assert main(["provision", "speaker-9", "--tls-port", "18883", "--plain-port", "11883"]) == 0
    out = capsys.readouterr().out
    broker = BrokerDir()
    assert f"mosquitto -c {broker.conf_file}" in out and "TEST CA" in out and "SIGHUP" in out
    assert broker.path == tmp_path / "state" / "broker"
    secret = [broker.users_file, broker.passwd_file, broker.credentials_file("speaker-9"),
              broker.tls_dir / "server.key", broker.tls_dir / "ca.key", default_key_file("speaker-9")]  # fmt: skip
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in secret} == {f.name: "0o600" for f in secret}
    creds = Credentials.load(broker.credentials_file("speaker-9"))
    assert creds.password not in out
    assert verify_password(creds.password, broker.load().users["speaker-9"].password_hash)
    assert f"speaker-9:{broker.load().users['speaker-9'].password_hash}" in broker.passwd_file.read_text()
    conf = broker.conf_file.read_text()
    assert "allow_anonymous false" in conf and "per_listener_settings false" in conf
    assert "listener 18883\n" in conf and "listener 11883 127.0.0.1" in conf
    key = SigningKey.load(default_key_file("speaker-9"))
    with Database(default_database()) as db:
        records = DeviceRegistry(db).records("speaker-9")
    assert [(r.kid, r.status) for r in records] == [(key.public.kid, KeyStatus.ACTIVE)] and creds.kid == key.public.kid

    with pytest.raises(KeyStoreError) as caught:
        main(["provision", "speaker-9"])
    assert caught.value.code is ErrorCode.KEY_CONFLICT
    assert Credentials.load(broker.credentials_file("speaker-9")) == creds  # nothing changed

    assert main(["provision", "speaker-9", "--rotate", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rotated"] is True and "password" not in report
    rotated = Credentials.load(broker.credentials_file("speaker-9"))
    assert rotated.password != creds.password and rotated.kid == report["kid"] != creds.kid
    assert rotated.broker_url().port == 18883  # the listener settings were kept
    assert SigningKey.load(default_key_file("speaker-9")).public.kid == rotated.kid
    with Database(default_database()) as db:
        statuses = {r.kid: r.status for r in DeviceRegistry(db).records("speaker-9")}
    assert statuses == {creds.kid: KeyStatus.RETIRED, rotated.kid: KeyStatus.ACTIVE}

    assert main(["provision", "gw-9", "--role", "gateway"]) == 0
    assert "signing key" not in capsys.readouterr().out
    assert Credentials.load(broker.credentials_file("gw-9")).kid is None
    assert not default_key_file("gw-9").exists()


def test_the_cli_as_a_process_reports_a_refusal(tmp_path: Path) -> None:
    exe = Path(__file__).parent.parent / ".venv" / "bin" / "device-sdk"
    if not exe.exists():
        pytest.skip("no .venv/bin/device-sdk")
    env = {"DEVICE_SDK_STATE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    first = subprocess.run([exe, "provision", "mon-1", "--role", "monitor"], env=env, capture_output=True, text=True)
    again = subprocess.run([exe, "provision", "mon-1", "--role", "monitor"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert again.returncode == 2 and "key_conflict" in again.stderr


# on the broker -----------------------------------------------------------------------------


@pytest.mark.mosquitto
async def test_a_device_reads_and_writes_its_own_topics(secured: Secured) -> None:
    own = [T.device_status("dev-a"), T.device_info("dev-a"), T.device_audio("dev-a"), T.device_image("dev-a"),
           T.device_step_up("dev-a"), T.device_up("dev-a")]  # fmt: skip
    async with (
        secured.bus("mon") as mon, secured.bus("dev-a") as a, secured.bus("gw-1") as gw,
        secured.bus("agent-1") as agent,
    ):  # fmt: skip
        tap = await mon.subscribe(T.everything())
        audio = await gw.subscribe(T.all_devices("audio"))
        pins = await gw.subscribe(T.all_devices("step_up"))
        images = await agent.subscribe(T.all_devices("image"))
        inbox = await a.subscribe(T.device_down("dev-a"), T.device_controller("dev-a"))
        for topic in own:
            await a.publish(topic, b"mine")
        seen = await until_marker(tap, own[-1], b"mine")
        assert [m.topic for m in seen] == [own[0], own[1], own[5]]  # the monitor reads no audio, images, PINs
        assert (await audio.get(5.0)).topic == own[2] and (await images.get(5.0)).topic == own[3]
        assert (await pins.get(5.0)).topic == own[4]
        await gw.publish(T.device_controller("dev-a"), b"claim")
        await gw.publish(T.device_down("dev-a"), b"hello")
        got = [await inbox.get(5.0), await inbox.get(5.0)]
    assert [(m.topic, m.payload) for m in got] == [
        (T.device_controller("dev-a"), b"claim"),
        (T.device_down("dev-a"), b"hello"),
    ]


async def reads_only_the_marker(
    reader: MqttBus, filters: list[str], writes: list[tuple[MqttBus, str]], marker: tuple[MqttBus, str]
) -> dict[str, list[tuple[str, bytes]]]:
    """Subscribe `reader` to each filter (with the marker's topic), make every write, then the marker;
    return what each subscription received up to the marker.

    Every write is acknowledged before the marker is published, so the broker (one thread) has routed
    it already: a message `reader` may read would be in its queue before the marker. A filter the
    broker refuses at once (SUBACK 0x80) is as good as one that receives nothing.
    """
    marker_writer, marker_topic = marker
    subs = {}
    for topic in filters:
        try:
            subs[topic] = await reader.subscribe(topic, marker_topic)
        except BusError as exc:
            if exc.code is not ErrorCode.NOT_AUTHORIZED:
                raise
    for writer, topic in writes:
        await writer.publish(topic, b"not-for-you", retain=topic.endswith(("/status", "/controller")))
    await marker_writer.publish(marker_topic, b"marker")
    return {topic: [(m.topic, m.payload) for m in await until_marker(sub, marker_topic, b"marker")]
            for topic, sub in subs.items()}  # fmt: skip


@pytest.mark.mosquitto
@pytest.mark.parametrize("reader", ["dev-a", "gw-1", "agent-1"])
async def test_no_role_reads_beyond_its_rights(secured: Secured, reader: str) -> None:
    """Whatever is subscribed, nothing outside the role's read rights is delivered (retained or live)."""
    async with (
        secured.bus("dev-a") as a, secured.bus("dev-b") as b, secured.bus("gw-1") as gw,
        secured.bus("agent-1") as agent, secured.bus("oem-x") as oem,
    ):  # fmt: skip
        buses = {"dev-a": a, "gw-1": gw, "agent-1": agent}
        b_own = [T.device_up("dev-b"), T.device_status("dev-b"), T.device_info("dev-b"), T.device_audio("dev-b"),
                 T.device_image("dev-b"), T.device_step_up("dev-b")]  # fmt: skip
        if reader == "dev-a":
            await gw.publish(T.device_controller("dev-b"), b"retained-claim", retain=True)
            await gw.publish(T.gateway_status("gw-1"), b"retained-status", retain=True)
            filters = [
                T.device_down("dev-b"), T.device_controller("dev-b"), *b_own, T.all_devices("down"),
                T.device_up("dev-a"), T.gateway_status("gw-1"), T.all_gateways_status(), T.agent_request(),
                T.agent_request_shared(), T.agent_reply("gw-1"), T.errors(), T.oem_intent("oem-x", "dev-b"),
                T.oem_intents_for("dev-b"), T.oem_reply("oem-x", "dev-b"),
                T.everything(), "#", "$SYS/#",
            ]  # fmt: skip
            writes = [(b, t) for t in b_own] + [
                (gw, T.device_down("dev-b")), (gw, T.device_controller("dev-b")), (gw, T.agent_request()),
                (gw, T.errors()), (agent, T.agent_reply("gw-1")), (oem, T.oem_intent("oem-x", "dev-b")),
                (b, T.oem_reply("oem-x", "dev-b")), (a, T.device_up("dev-a")),
            ]  # fmt: skip
            marker = (gw, T.device_down("dev-a"))
        elif reader == "gw-1":
            filters = [T.agent_request(), T.all_devices("image"), T.agent_reply("gw-2"), T.oem_intents_for("dev-a"),
                       T.errors(), T.everything()]  # fmt: skip
            writes = [(gw, T.agent_request()), (a, T.device_image("dev-a")), (agent, T.agent_reply("gw-2")),
                      (oem, T.oem_intent("oem-x", "dev-a")), (gw, T.errors())]  # fmt: skip
            marker = (a, T.device_up("dev-a"))
        else:
            filters = [T.all_devices("up"), T.all_devices("audio"), T.all_devices("status"),
                       T.all_devices("step_up"), T.agent_reply("gw-1"), T.errors(), T.everything()]  # fmt: skip
            writes = [(b, T.device_up("dev-b")), (b, T.device_audio("dev-b")), (b, T.device_status("dev-b")),
                      (b, T.device_step_up("dev-b")), (agent, T.agent_reply("gw-1")), (agent, T.errors())]  # fmt: skip
            marker = (gw, T.agent_request())
        received = await reads_only_the_marker(buses[reader], filters, writes, marker)
    assert received == {topic: [(marker[1], b"marker")] for topic in received}


@pytest.mark.mosquitto
async def test_a_devices_publishes_elsewhere_are_dropped(secured: Secured) -> None:
    forbidden = [
        T.device_up("dev-b"), T.device_status("dev-b"), T.device_down("dev-b"), T.device_down("dev-a"),
        T.device_controller("dev-a"), T.device_controller("dev-b"), T.gateway_status("gw-1"), T.agent_request(),
        T.agent_reply("gw-1"), T.errors(),
    ]  # fmt: skip
    marker = T.device_up("dev-a")
    async with secured.bus("mon") as mon, secured.bus("dev-a") as a, secured.bus("gw-1") as gw:
        tap = await mon.subscribe(T.everything())
        for topic in forbidden:
            await a.publish(topic, b"forged", retain=topic.endswith(("/status", "/controller")))  # acked all the same
        await a.publish(marker, b"marker")  # same client: delivered after anything published before it
        seen = await until_marker(tap, marker, b"marker")
        assert [(m.topic, m.payload) for m in seen] == [(marker, b"marker")]
        # nor was a forged retained message kept: it would reach a new subscriber before anything new
        statuses = await gw.subscribe(T.all_devices("status"), T.all_devices("controller"))
        await a.publish(T.device_status("dev-a"), b"a-status", retain=True)
        first = await statuses.get(5.0)
        assert (first.topic, first.payload) == (T.device_status("dev-a"), b"a-status")


@pytest.mark.mosquitto
@pytest.mark.parametrize("tls", [True, False], ids=["tls", "loopback"])
async def test_wrong_password_unknown_user_and_anonymous_are_refused_at_once(secured: Secured, tls: bool) -> None:
    good = secured.url("dev-a", tls=tls)
    attempts = {
        "wrong password": replace(good, password="not-the-password"),
        "no password": replace(good, password=None),
        "unknown user": replace(good, username="dev-z"),
        "another's password": replace(good, password=secured.creds["dev-b"].password),
        "anonymous": replace(good, username=None, password=None),
    }
    started = time.monotonic()
    codes = {what: (await refused_on_connect(url)).code for what, url in attempts.items()}
    assert codes == dict.fromkeys(attempts, ErrorCode.NOT_AUTHORIZED)
    assert time.monotonic() - started < 5.0  # no retrying until the 10 s connect timeout
    async with MqttBus(good, "dev-a-ok", connect_timeout=5.0) as bus:
        assert bus.connected


@pytest.mark.mosquitto
async def test_tls_needs_the_ca_that_signed_the_broker(secured: Secured, tmp_path: Path) -> None:
    url = secured.url("dev-a")
    assert url.tls and url.ca == str(secured.broker.tls_dir.resolve() / "ca.crt")
    stranger = ensure_test_ca(tmp_path / "another-ca")
    for ca in (None, str(stranger.ca)):  # the system's CAs; another test CA
        error = await refused_on_connect(replace(url, ca=ca))
        assert error.code is ErrorCode.NOT_CONNECTED and "certificate" in error.text
    async with MqttBus(url, "dev-a-tls", connect_timeout=5.0) as bus:
        assert bus.connected


@pytest.mark.mosquitto
async def test_new_rotated_and_revoked_users_take_effect_on_sighup(secured: Secured) -> None:
    new = secured.provision("dev-c")
    assert (await refused_on_connect(new.broker_url())).code is ErrorCode.NOT_AUTHORIZED  # not read yet
    old_a = secured.creds["dev-a"]
    async with MqttBus(old_a.broker_url(), "dev-a-old", connect_timeout=5.0) as old:
        await old.publish(T.device_up("dev-a"), b"before")
        rotated_a = secured.provision("dev-a", rotate=True)
        gone = revoke("dev-b", directory=secured.broker.path, database=secured.database)
        await secured.server.reload()
        with pytest.raises((BusError, RequestTimeout)):  # Mosquitto closed the connection of the old password
            await old.publish(T.device_up("dev-a"), b"after", timeout=1.0)
    assert gone.role is Role.DEVICE and gone.keys_revoked == 1
    assert not secured.broker.credentials_file("dev-b").exists()
    for url in (old_a.broker_url(), secured.url("dev-b")):
        assert (await refused_on_connect(url)).code is ErrorCode.NOT_AUTHORIZED
    for creds in (new, rotated_a):
        async with MqttBus(creds.broker_url(), f"{creds.username}-ok", connect_timeout=5.0) as bus:
            await bus.publish(T.device_up(creds.username), b"hello")
    with Database(secured.database) as db:
        assert {r.status for r in DeviceRegistry(db).records("dev-b")} == {KeyStatus.REVOKED}


@pytest.mark.mosquitto
async def test_a_purchase_over_the_secured_broker_with_a_credential_per_role(secured: Secured) -> None:
    """The gateway, the agent worker, the device and the timeline tap each with their own user over TLS:
    the ACLs are enough for the whole flow, not only restrictive."""
    s = secured
    key = SigningKey.load(s.keys / "dev-a.pem")
    expected = {"agent.request", "checkout.proposal", "confirmation.request", "confirmation.result", "order.result"}
    tapped: set[str] = set()
    all_seen = asyncio.Event()

    def echo(step: Step) -> None:
        tapped.add(step.type)
        if expected <= tapped:
            all_seen.set()

    async with (
        Timeline(s.url("mon"), echo=echo),
        ShopBackend(
            s.url("gw-1"), gateway_id="gw-1", agent_url=s.url("agent-1"), database=s.database, confirm_timeout=5.0
        ) as shop,
    ):
        assert shop.worker is not None and shop.worker.shared is True  # the agent's probe passed its ACL
        async with DeviceClient(s.url("dev-a"), "dev-a", key=key, resend_after=0.5) as device:
            offer = await device.ask("buy two packs of AA batteries")
            result = await device.answer(offer, Decision.CONFIRM, modality=Modality.TEXT, heard="confirm")
        await asyncio.wait_for(all_seen.wait(), 5.0)  # the monitor saw the whole conversation
        # dev-b as a phone: its intent bridge on its own user, an intent from the oem-x user
        phone = SimulatedPhone("dev-b", SigningKey.load(s.keys / "dev-b.pem"), SigningKey.generate(), oem_id="oem-x")
        verifier = IntentVerifier(OemKeys([("oem-x", phone.oem_key.public)]))
        async with (
            DeviceClient(s.url("dev-b"), "dev-b", kind=DeviceKind.PHONE) as device_b,
            IntentBridge(device_b, verifier, phone) as bridge,
            MqttBus(s.url("oem-x"), "oem-x") as oem,
        ):
            token = phone.intent("buy a bottle of milk")
            intent = await send_intent("bus", token, bus=oem, bridge=bridge, oem_id="oem-x")
    assert intent.outcome is Outcome.ORDERED and shop.verifier.last is not None
    assert shop.verifier.last.modality == "phone_sheet" and shop.verifier.last.device_id == "dev-b"
    assert result.outcome is Outcome.ORDERED
    assert [(line.sku, line.qty) for line in offer.request.proposal.lines] == [("bat-aa-4", 2)]
    assert [order.order_id for order in shop.checkout.orders] == [result.order_id, intent.order_id]


# what MqttBus does with refusals Mosquitto's ACL file never sends ------------------------------


class RefusingBroker:
    """Just enough MQTT 3.1.1 for one client: CONNACK with `connack`; SUBACK 0x80 for filters under
    `deny/`, the asked QoS for others; UNSUBACK; PINGRESP. Mosquitto answers a bad password with 5
    and its ACL file grants every subscription, so codes 4 and 0x80 are tried here."""

    def __init__(self, connack: int = 0) -> None:
        self.connack = connack
        self.subscribed: list[str] = []
        self.unsubscribed: list[str] = []
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RefusingBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                kind = (await reader.readexactly(1))[0] >> 4
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length += (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                body = await reader.readexactly(length)
                if kind == 1:  # CONNECT
                    writer.write(bytes([0x20, 2, 0, self.connack]))
                    if self.connack:
                        break
                elif kind in (8, 10):  # SUBSCRIBE, UNSUBSCRIBE
                    codes, at = [], 2
                    while at < len(body):
                        size = int.from_bytes(body[at : at + 2])
                        topic = body[at + 2 : at + 2 + size].decode()
                        at += 2 + size
                        if kind == 8:
                            self.subscribed.append(topic)
                            codes.append(0x80 if topic.startswith("deny/") else body[at])
                            at += 1
                        else:
                            self.unsubscribed.append(topic)
                    writer.write(bytes([0x90 if kind == 8 else 0xB0, 2 + len(codes)]) + body[:2] + bytes(codes))
                elif kind == 12:  # PINGREQ
                    writer.write(bytes([0xD0, 0]))
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_subscription_refused_by_suback_raises_and_is_not_kept() -> None:
    async with RefusingBroker() as broker, MqttBus(BrokerUrl("127.0.0.1", broker.port), "sub-test") as bus:
        with pytest.raises(BusError) as caught:
            await bus.subscribe("fine/1", "deny/secret")
        assert caught.value.code is ErrorCode.NOT_AUTHORIZED
        assert "deny/secret" in caught.value.text and "fine/1" not in caught.value.text
        assert {"fine/1", "deny/secret"} <= set(broker.unsubscribed)  # the granted filter was dropped again
        kept = await bus.subscribe("fine/2")
        assert kept.filters == ("fine/2",) and broker.subscribed[-1] == "fine/2"


@pytest.mark.parametrize("code", [4, 5])
async def test_connack_bad_credentials_or_not_authorised_ends_connect_at_once(code: int) -> None:
    async with RefusingBroker(connack=code) as broker:
        bus = MqttBus(BrokerUrl("127.0.0.1", broker.port, "someone", "guess"), "auth-test", connect_timeout=10.0)
        started = time.monotonic()
        with pytest.raises(BusError) as caught:
            await bus.connect()
        assert caught.value.code is ErrorCode.NOT_AUTHORIZED and "someone" in caught.value.text
        assert time.monotonic() - started < 5.0


async def test_connack_server_unavailable_is_retried_until_the_timeout() -> None:
    async with RefusingBroker(connack=3) as broker:
        bus = MqttBus(BrokerUrl("127.0.0.1", broker.port), "retry-test", connect_timeout=0.5)
        with pytest.raises(BusError) as caught:
            await bus.connect()
    assert caught.value.code is ErrorCode.NOT_CONNECTED and "Server unavailable" in caught.value.text


@pytest.mark.mosquitto
async def test_a_phone_takes_its_own_intents_and_only_its_oem_reads_the_answer(secured: Secured) -> None:
    """The intent bridge runs on the phone's own credentials: it reads the intents for that phone
    from any OEM and answers them; the OEM writes only under its own id and reads only its replies."""
    async with secured.bus("dev-a") as phone, secured.bus("oem-x") as oem:
        intents = await phone.subscribe(T.oem_intents_for("dev-a"))
        replies = await oem.subscribe(f"{T.base}/oem/oem-x/+/reply")
        await oem.publish(T.oem_intent("oem-y", "dev-a"), b"posing as another OEM")  # dropped
        await oem.publish(T.oem_intent("oem-x", "dev-a"), b"intent")
        got = await intents.get(5.0)
        assert (got.topic, got.payload) == (T.oem_intent("oem-x", "dev-a"), b"intent")
        await phone.publish(T.oem_reply("oem-x", "dev-b"), b"answering for another phone")  # dropped
        await phone.publish(T.oem_reply("oem-x", "dev-a"), b"result")
        answer = await replies.get(5.0)
        assert (answer.topic, answer.payload) == (T.oem_reply("oem-x", "dev-a"), b"result")


# issue 18, finding 3: a monitor sees no intent, and no picture with a position -------------------


def assert_no_position(jpeg: bytes) -> None:
    for secret in SECRETS:
        assert secret not in jpeg, secret
    with Image.open(io.BytesIO(jpeg)) as picture:
        assert picture.format == "JPEG" and getattr(picture, "n_frames", 1) == 1
        assert not picture.getexif().get_ifd(ExifTags.IFD.GPSInfo) and "xmp" not in picture.info


@pytest.mark.mosquitto
async def test_finding_3_a_monitor_gets_no_intent_and_the_bridge_publishes_no_position(secured: Secured) -> None:
    """An OEM sends a phone an intent with the phone camera's multi-picture file (GPS in three EXIF
    blocks, XMP, a second picture): the monitor, subscribed to everything, never receives the intent,
    only its answer; the picture the bridge publishes for the agent carries no position."""
    s = secured
    phone = SimulatedPhone("dev-b", SigningKey.load(s.keys / "dev-b.pem"), SigningKey.generate(), oem_id="oem-x")
    verifier = IntentVerifier(OemKeys([("oem-x", phone.oem_key.public)]))
    token = phone.intent("buy two of these", image=phone_photo(), as_taken=True)  # an OEM that does not strip
    reply_topic = T.oem_reply("oem-x", "dev-b")
    async with (
        ShopBackend(
            s.url("gw-1"), gateway_id="gw-1", agent_url=s.url("agent-1"), database=s.database, confirm_timeout=5.0
        ),
        s.bus("mon") as mon, s.bus("agent-1") as agent_tap,
        DeviceClient(s.url("dev-b"), "dev-b", kind=DeviceKind.PHONE) as device_b,
        IntentBridge(device_b, verifier, phone) as bridge,
        MqttBus(s.url("oem-x"), "oem-x") as oem,
    ):  # fmt: skip
        tap = await mon.subscribe(T.everything(), f"{T.base}/oem/#", T.oem_intent("oem-x", "dev-b"))
        images = await agent_tap.subscribe(T.all_devices("image"))
        result = await send_intent("bus", token, bus=oem, bridge=bridge, oem_id="oem-x")
        published = await images.get(5.0)
        seen = [await tap.get(5.0)]
        while seen[-1].topic != reply_topic:  # the answer comes after the intent it answers
            seen.append(await tap.get(5.0))
    topics = {m.topic for m in seen}
    assert result.intent_id is not None and result.code is not ErrorCode.NOT_UNDERSTOOD
    assert T.device_down("dev-b") in topics  # the offer the agent made of the stripped picture
    assert T.device_up("dev-b") in topics  # the phone's request, with an image_ref only
    assert [m.topic for m in seen if m.topic.endswith("/intent")] == []
    assert all(token.encode() not in m.payload and b"Exif" not in m.payload for m in seen)
    assert published.topic == T.device_image("dev-b")
    assert_no_position(published.payload)


def test_finding_3_an_intent_signed_by_the_sdk_carries_its_picture_stripped() -> None:
    phone = SimulatedPhone("dev-b", SigningKey.generate(), SigningKey.generate(), oem_id="oem-x")
    claims = unverified_claims(phone.intent("buy two of these", image=phone_photo(orientation=6)))
    assert claims is not None
    jpeg = base64.b64decode(claims["extras"]["image"])
    assert_no_position(jpeg)
    assert read_tag(jpeg) == "bat-aa-4"  # turned upright before its EXIF went


PIN = "90817263"


@pytest.mark.mosquitto
async def test_finding_2_the_pin_is_not_on_a_topic_a_monitor_reads(secured: Secured) -> None:
    """A speaker provisioned with a PIN steps up and orders above the voice cap over the secured broker:
    its PIN travels on its own `step_up` topic, which the gateway reads and a monitor subscribed to
    everything never receives, and no answer repeats it; a `step_up` sent on `up` by mistake is
    refused (`wrong_topic`) and checks nothing. On main the PIN was in a message on `up`."""
    s = secured
    where = {"directory": s.broker.path, "database": s.database}
    s.creds["dev-p"] = provision("dev-p", key_out=s.keys / "dev-p.pem", pin=PIN, **where).credentials  # type: ignore[arg-type]
    await s.server.reload()
    wrong = "12345678"
    ask = "buy two yoga mats and a pair of running shoes"  # 657 CNY: over the voice cap
    async with (
        ShopBackend(
            s.url("gw-1"), gateway_id="gw-1", agent_url=s.url("agent-1"), database=s.database, confirm_timeout=5.0
        ) as shop,
        s.bus("mon") as mon,
        DeviceClient(s.url("dev-p"), "dev-p", key=SigningKey.load(s.keys / "dev-p.pem"), resend_after=0.5) as device,
    ):  # fmt: skip
        tap = await mon.subscribe("#", T.all_devices("step_up"), T.device_step_up("dev-p"))
        offer = await device.ask(ask)
        assert Modality.VOICE not in offer.request.consent.modalities
        with pytest.raises(RemoteError) as caught:
            await device.step_up(offer, wrong)
        assert caught.value.code == ErrorCode.STEP_UP_FAILED
        proof = await device.step_up(offer, PIN)
        mandate = device.sign(offer, Modality.VOICE_PIN, step_up=proof)
        result = await device.answer(offer, Decision.CONFIRM, modality=Modality.VOICE_PIN, mandate=mandate)
        await device.bus.publish(T.device_up("dev-p"), b"marker")  # after all of it, from the same client
        seen = await until_marker(tap, T.device_up("dev-p"), b"marker")
        # a device that puts its step-up on `up` gets no proof, and the platform counts no try
        again = await device.ask(ask)
        req = again.request
        on_up = StepUp(step_up_id="su-on-up", session_id=req.session_id, checkout_id=req.checkout_id,
                       checkout_hash=req.checkout_hash, pin=PIN)  # fmt: skip
        await device.bus.publish(T.device_up("dev-p"), on_up.encode())
        answers = [await tap.get(5.0)]
        while not (answers[-1].topic == T.device_down("dev-p") and b'"wrong_topic"' in answers[-1].payload):
            answers.append(await tap.get(5.0))
    assert result.outcome is Outcome.ORDERED and len(shop.checkout.orders) == 1
    assert [r["outcome"] for r in trail(s.database, offer.session_id) if r["kind"] == "step_up"] == [
        "wrong_pin",
        "proved",
    ]  # the gateway read both tries
    assert not any(m.topic.endswith("/step_up") for m in seen + answers)
    assert all(PIN.encode() not in m.payload and wrong.encode() not in m.payload for m in seen)
    down = [json.loads(m.payload) for m in seen if m.topic == T.device_down("dev-p")]
    assert {"step_up.result", "order.result"} <= {m["type"] for m in down}  # the monitor reads the answers...
    assert [m["code"] for m in down if m["type"] == "error"][:1] == ["step_up_failed"]  # ...with no PIN in them
    refusal = json.loads(answers[-1].payload)
    assert refusal["ref"] == req.checkout_id and PIN not in answers[-1].payload.decode()
    assert not any(b"step_up.result" in m.payload for m in answers)
    assert [x for x in trail(s.database, req.session_id) if x["kind"] == "step_up"] == []
