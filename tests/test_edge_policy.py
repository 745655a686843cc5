"""The device's own limits (issue 22, item 3): an offer that breaks its edge policy is refused on the
device, whatever the platform sent; nothing is signed, the gateway hears a typed decline
(`edge_policy.<rule>`) and its audit log records it; the day's spend counts confirmed orders only."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import stat
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mqtt import MqttBus
from device_sdk.cli import main
from device_sdk.consent.edge_policy import EdgePolicy, EdgeRule
from device_sdk.consent.keys import SigningKey
from device_sdk.consent.readback import confirmation_request, display_digest
from device_sdk.device.client import DeviceClient
from device_sdk.device.edge_policy import EdgeGuard, EdgePolicyRefused
from device_sdk.device.offer import Offer
from device_sdk.locale import locale_for
from device_sdk.platform.checkout.audit import trail
from device_sdk.platform.provisioning.broker_config import BrokerDir
from device_sdk.protocol.errors import ConfigError, ErrorCode
from device_sdk.protocol.fields import Decision, DeviceKind, Modality, Outcome, new_id
from device_sdk.protocol.messages import (
    AgentRequest,
    ConfirmationResult,
    ConsentTerms,
    IssuedProposal,
    OrderResult,
    decode,
)
from device_sdk.protocol.topics import Topics
from firmware_bridge.glasses import CAPABILITIES, GlassesDriver
from firmware_bridge.link import GlassesLink, find_glasses
from firmware_bridge.phone import HandedOffers
from simulators.ble_radio import BumbleClient, BumbleScanner, VirtualRadio
from simulators.glasses import SimulatedGlasses
from simulators.phone import SimulatedPhone
from simulators.scenario import ShopBackend
from simulators.speaker import SimulatedSpeaker
from tests.conftest import EmbeddedRestartable, keyed
from tests.consent_kit import make_proposal

SHANGHAI_2330 = datetime(2026, 12, 7, 15, 30, tzinfo=UTC).timestamp()
"""23:30 in Asia/Shanghai (UTC+8), 15:30 in UTC."""


def guard(tmp_path: Path, clock: float | None = None, **policy: Any) -> EdgeGuard:
    at = [clock if clock is not None else time.time()]
    return EdgeGuard(EdgePolicy.model_validate(policy), tmp_path / "policy.spend.json", lambda: at[0])


def offer_of(issued: IssuedProposal, locale: str | None = None) -> Offer:
    proposal = issued.proposal.model_copy(update={"locale": locale}) if locale else issued.proposal
    terms = ConsentTerms(audience="shop-checkout:test", nonce=secrets.token_urlsafe(16), payment_handler="ph-card",
                         modalities=[Modality.VOICE])  # fmt: skip
    request = confirmation_request(proposal, issued.checkout_hash, new_id("req"), terms, time.time() + 120)
    return Offer.checked(request)


async def test_a_hostile_gateway_over_the_limit_gets_a_refusal_and_nothing_signed(
    embedded: EmbeddedRestartable, tmp_path: Path
) -> None:
    """A double on the bus answers the device's request with a well-formed, hashed offer over the
    device's limit per order: the device refuses it, signs nothing and declines with its rule."""
    topics, heard = Topics(), asyncio.Queue[Any]()
    policy = guard(tmp_path, max_per_order={"CNY": 1000})  # the offer is 38.30 CNY
    async with MqttBus(embedded.url, "hostile-gateway") as hostile:
        up = await hostile.subscribe(topics.device_up("speaker-1"))

        async def play() -> None:
            async for received in up:
                message = decode(received.payload)
                if isinstance(message, AgentRequest):
                    issued = make_proposal()
                    proposal = issued.proposal.model_copy(
                        update={"session_id": message.session_id, "request_id": message.request_id}
                    )
                    offer = offer_of(IssuedProposal(proposal, proposal.encode())).request
                    offer = offer.model_copy(update={"request_id": message.request_id})
                    await hostile.publish(topics.device_down("speaker-1"), offer.encode())
                elif isinstance(message, ConfirmationResult):
                    await heard.put(message)
                    ended = OrderResult(session_id=message.session_id, checkout_id=message.checkout_id,
                                        outcome=Outcome.DECLINED)  # fmt: skip
                    await hostile.publish(topics.device_down("speaker-1"), ended.encode())

        playing = asyncio.create_task(play())
        try:
            key = SigningKey.generate()
            async with DeviceClient(embedded.url, "speaker-1", key=key, edge_policy=policy, heartbeat=0) as device:
                with pytest.raises(EdgePolicyRefused) as refused:
                    await device.ask("buy milk", timeout=10)
                declined: ConfirmationResult = await asyncio.wait_for(heard.get(), 10)
        finally:
            playing.cancel()
    assert refused.value.code is ErrorCode.EDGE_POLICY and refused.value.rule is EdgeRule.MAX_PER_ORDER
    assert refused.value.says == locale_for("en-US").edge_policy["max_per_order"]
    assert declined.decision is Decision.DECLINE and declined.mandate is None
    assert declined.declined_for == "edge_policy.max_per_order"
    assert heard.empty()  # one answer, a decline: nothing confirmed, nothing signed
    with pytest.raises(EdgePolicyRefused):  # asked to sign it anyway, the device refuses
        device.sign(offer_of(make_proposal()), Modality.VOICE)


async def test_a_refusal_reaches_the_audit_log_of_a_real_gateway(embedded: EmbeddedRestartable, tmp_path: Path) -> None:
    async with ShopBackend(embedded.url) as shop:
        policy = guard(tmp_path, max_per_order={"CNY": 1000})  # milk is 12.50 CNY
        async with keyed(shop, embedded, edge_policy=policy) as device:
            with pytest.raises(EdgePolicyRefused):
                await device.ask("buy milk", session_id="ses_edge1")
        records = trail(shop.db.path, "ses_edge1")
        assert [r["kind"] for r in records if r["kind"] in ("confirmation", "result")] == ["confirmation", "result"]
        confirmation = next(r for r in records if r["kind"] == "confirmation")
        result = next(r for r in records if r["kind"] == "result")
        assert confirmation["decision"] == "decline" and confirmation["declined_for"] == "edge_policy.max_per_order"
        assert result["outcome"] == "declined" and result["reason"].startswith("edge_policy.max_per_order")
        assert shop.verifier.orders() == []


async def test_the_daily_cap_counts_confirmed_orders_across_sessions(
    embedded: EmbeddedRestartable, tmp_path: Path
) -> None:
    now = [time.time()]
    policy = EdgeGuard(EdgePolicy(max_per_day={"CNY": 2000}), tmp_path / "policy.spend.json", lambda: now[0])
    async with ShopBackend(embedded.url) as shop, keyed(shop, embedded, edge_policy=policy) as device:
        declined = await device.answer(await device.ask("buy milk"), Decision.DECLINE)
        assert declined.outcome is Outcome.DECLINED and policy.spent_today("CNY") == 0  # not an order: not counted
        first = await device.answer(await device.ask("buy milk"), Decision.CONFIRM)
        assert first.outcome is Outcome.ORDERED and policy.spent_today("CNY") == 1250
        with pytest.raises(EdgePolicyRefused) as refused:  # 12.50 + 12.50 > 20.00
            await device.ask("buy milk")
        assert refused.value.rule is EdgeRule.MAX_PER_DAY
        now[0] += 86400  # the next day, in the device's time zone
        second = await device.answer(await device.ask("buy milk"), Decision.CONFIRM)
        assert second.outcome is Outcome.ORDERED and policy.spent_today("CNY") == 1250
        assert len(shop.verifier.orders()) == 2
    assert json.loads((tmp_path / "policy.spend.json").read_text())["orders"] == [second.order_id]


def test_quiet_hours_in_the_devices_own_time_zone(tmp_path: Path) -> None:
    quiet = {"quiet_hours": {"start": "22:00", "end": "07:00"}}
    in_shanghai = guard(tmp_path, SHANGHAI_2330, time_zone="Asia/Shanghai", **quiet)
    with pytest.raises(EdgePolicyRefused) as refused:
        in_shanghai.check(offer_of(make_proposal(), locale="zh-CN"))
    assert refused.value.rule is EdgeRule.QUIET_HOURS
    assert refused.value.says == "现在不能购物：这台设备处于免打扰时段。"
    guard(tmp_path, SHANGHAI_2330, time_zone="UTC", **quiet).check(offer_of(make_proposal()))  # 15:30 there
    guard(tmp_path, SHANGHAI_2330 - 9 * 3600, time_zone="Asia/Shanghai", **quiet).check(offer_of(make_proposal()))
    daytime = {"quiet_hours": {"start": "12:00", "end": "14:00"}}
    with pytest.raises(EdgePolicyRefused):
        guard(tmp_path, SHANGHAI_2330 - 10 * 3600, time_zone="Asia/Shanghai", **daytime).check(
            offer_of(make_proposal())
        )


def test_merchants_categories_and_skus_allowed(tmp_path: Path) -> None:
    milk, mixed = make_proposal(items=(("milk-1l", 1),)), make_proposal()  # mixed: batteries from m-homegoods
    guard(tmp_path, merchants=["m-fresh"]).check(offer_of(milk))
    for policy, rule in (({"merchants": ["m-fresh"]}, EdgeRule.MERCHANT),
                         ({"categories": ["grocery"]}, EdgeRule.CATEGORY),
                         ({"skus": ["milk-1l"]}, EdgeRule.SKU),
                         ({"max_per_order": {"USD": 100_000}}, EdgeRule.MAX_PER_ORDER)):  # fmt: skip
        with pytest.raises(EdgePolicyRefused) as refused:
            guard(tmp_path, **policy).check(offer_of(mixed))
        assert refused.value.rule is rule, policy
    guard(tmp_path, categories=["grocery", "household"], skus=["milk-1l", "bat-aa-4"]).check(offer_of(mixed))


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("p.toml", "max_per_order = { CNY = -5 }", "max_per_order.CNY"),
        ("p.toml", "max_per_ordr = { CNY = 5 }", "max_per_ordr"),
        ("p.toml", 'time_zone = "Mars/Olympus"', "unknown time zone"),
        ("p.toml", 'quiet_hours = { start = "25:00", end = "07:00" }', "quiet_hours.start"),
        ("p.toml", 'quiet_hours = { start = "07:00", end = "07:00" }', "different times"),
        ("p.toml", "max_per_order = {", "not valid TOML"),
        ("p.json", '{"suggestions": true,', "not valid JSON"),
    ],
)
def test_a_bad_policy_file_gets_a_clear_error(tmp_path: Path, name: str, text: str, says: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        EdgeGuard.load(path)
    assert caught.value.code is ErrorCode.BAD_CONFIG and says in caught.value.text and str(path) in caught.value.text
    with pytest.raises(ConfigError):
        DeviceClient("mqtt://127.0.0.1:1", "speaker-1", edge_policy=path)


def test_a_policy_file_loads_from_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "policy.toml"
    toml.write_text('time_zone = "Asia/Shanghai"\nsuggestions = true\nmerchants = ["m-fresh"]\n'
                    '[max_per_order]\nCNY = 5000\n[quiet_hours]\nstart = "22:00"\nend = "08:00"\n')  # fmt: skip
    loaded = EdgeGuard.load(toml)
    assert loaded.policy.max_per_order == {"CNY": 5000} and loaded.policy.suggestions is True
    assert loaded.spend_file == tmp_path / "policy.spend.json"
    json_file = tmp_path / "policy.json"
    json_file.write_text(loaded.policy.model_dump_json())
    assert EdgePolicy.load(json_file) == loaded.policy
    (tmp_path / "policy.spend.json").write_text("[1, 2]")
    with pytest.raises(ConfigError):
        loaded.spent_today("CNY")


def test_provisioning_checks_the_policy_and_writes_it_beside_the_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path / "state"))
    bad = tmp_path / "bad.toml"
    bad.write_text("max_per_order = { CNY = -1 }")
    with pytest.raises(ConfigError):
        main(["provision", "speaker-7", "--edge-policy", str(bad)])
    assert "speaker-7" not in BrokerDir().load().users  # a bad policy: nothing provisioned
    good = tmp_path / "limits.toml"
    good.write_text('time_zone = "Asia/Shanghai"\n[max_per_order]\nCNY = 1000\n')
    assert main(["provision", "speaker-7", "--edge-policy", str(good), "--json"]) == 0
    written = Path(json.loads(capsys.readouterr().out)["edge_policy_file"])
    assert written == BrokerDir().credentials_file("speaker-7").with_name("speaker-7.edge-policy.json")
    assert oct(stat.S_IMODE(written.stat().st_mode)) == "0o600"
    loaded = EdgeGuard.load(written)
    assert loaded.policy == EdgePolicy.load(good) and loaded.spend_file.name == "speaker-7.edge-policy.spend.json"
    with pytest.raises(ConfigError):
        main(["provision", "gw-7", "--role", "gateway", "--edge-policy", str(good)])


async def test_the_simulated_speaker_says_the_reason_and_presents_nothing(
    embedded: EmbeddedRestartable, tmp_path: Path
) -> None:
    async with ShopBackend(embedded.url) as shop:
        policy = guard(tmp_path, merchants=["m-homegoods"])  # milk comes from m-fresh
        async with keyed(shop, embedded, edge_policy=policy, locale="zh-CN") as device:
            run = await SimulatedSpeaker(device).run("买一瓶牛奶", ["确认"])
        assert run.refused is not None and run.refused.rule is EdgeRule.MERCHANT
        assert run.presented == ["这里不能购买：这台设备不在这家商户购物。"]  # the reason, never a read-back
        assert run.offer is None and run.mandate is None and run.result is None
        assert shop.verifier.orders() == []


async def test_a_handed_over_offer_over_the_phones_limit_is_declined_not_shown(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(EmbeddedBroker())
        shop = await stack.enter_async_context(ShopBackend(broker.url, shared=False))
        speaker_key = await asyncio.to_thread(shop.provision, "speaker-1")
        phone_key = await asyncio.to_thread(shop.provision, "phone-1", DeviceKind.PHONE)
        await asyncio.to_thread(shop.verifier.registry.pair, "speaker-1", "phone-1")
        speaker = await stack.enter_async_context(DeviceClient(broker.url, "speaker-1", key=speaker_key))
        limits = guard(tmp_path, max_per_order={"CNY": 1000})  # the batteries are 25.80 CNY
        phone = await stack.enter_async_context(
            DeviceClient(broker.url, "phone-1", key=phone_key, kind=DeviceKind.PHONE, edge_policy=limits)
        )
        sheet = SimulatedPhone("phone-1", phone_key, SigningKey.generate(), tap="confirm")  # type: ignore[arg-type]
        app = await stack.enter_async_context(HandedOffers(phone, sheet, sheet_timeout=5.0))
        offer = await speaker.ask("buy two packs of AA batteries")
        assert await speaker.hand_over(offer) == "phone-1"
        result = await speaker.result(offer, timeout=20)
        assert result.outcome is Outcome.DECLINED and (result.reason or "").startswith("edge_policy.max_per_order")
        assert sheet.shown == [] and shop.verifier.orders() == []
        for _ in range(500):  # the phone hears the result of its decline too
            if app.refused:
                break
            await asyncio.sleep(0.01)
        assert [type(e) for e in app.refused] == [EdgePolicyRefused]
        declined = next(r for r in trail(shop.db.path, offer.session_id) if r["kind"] == "confirmation")
        assert declined["device_id"] == "speaker-1" and declined["declined_for"] == "edge_policy.max_per_order"


async def test_the_glasses_show_the_reason_on_the_lens_and_no_card(tmp_path: Path) -> None:
    radio = VirtualRadio()
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(EmbeddedBroker())
        shop = await stack.enter_async_context(ShopBackend(broker.url, shared=False))
        key = await asyncio.to_thread(shop.provision, "glasses-1", DeviceKind.GLASSES)
        glasses = await stack.enter_async_context(SimulatedGlasses(radio, device_id="glasses-1"))
        found = await find_glasses(name=glasses.name, timeout=5.0, backend=BumbleScanner, central=await radio.central())
        link = await stack.enter_async_context(GlassesLink(found[0].device, backend=BumbleClient))
        night = {"start": "22:00", "end": "07:00"}
        quiet = guard(tmp_path, SHANGHAI_2330, time_zone="Asia/Shanghai", quiet_hours=night)
        device = await stack.enter_async_context(
            DeviceClient(
                broker.url, "glasses-1", kind=DeviceKind.GLASSES, capabilities=CAPABILITIES, key=key, edge_policy=quiet
            )
        )
        run = await GlassesDriver(link, device, decision_timeout=2.0).run("buy milk", look=False)
        says = locale_for("en-US").edge_policy["quiet_hours"]
        assert run.refused is not None and run.refused.says == says and run.card is None and run.mandate is None
        assert glasses.shown == display_digest(says)  # the reason is what the lens shows
        assert shop.verifier.orders() == []
