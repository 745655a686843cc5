"""Agent-initiated suggestions (issue 22): each decline reason, one device of a household speaks, the
stop phrase in both locales, an order only after the usual confirmation with `initiated_by` audited,
the demo's JSON and its bad inputs (docs/consent.md, "Suggestions")."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mqtt import MqttBus
from device_sdk.consent.edge_policy import EdgePolicy
from device_sdk.consent.mandate import MandateClaims
from device_sdk.device.client import DeviceClient
from device_sdk.device.suggestion_inbox import SuggestionInbox
from device_sdk.device.suggestions import SuggestionGate, SuggestionSettings, quiet_hours
from device_sdk.platform.checkout.audit import verified_records
from device_sdk.platform.gateway.suggestion_arbitration import pick_speaker
from device_sdk.platform.gateway.suggestion_offers import offer_suggestion
from device_sdk.protocol.errors import ConfigError, ErrorCode
from device_sdk.protocol.fields import Decision
from device_sdk.protocol.suggestions import DeclineReason, SuggestionOffer, SuggestionResult
from device_sdk.voice.reply_judge import Opinion, ReplyJudge, Verdict, decide, opinion
from simulators.scenario import ShopBackend
from simulators.suggest_demo import run_suggestion

NOON_UTC = datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp()
"""12:00 in UTC is 20:00 in Shanghai and 07:00 in New York (inside its default quiet hours)."""
OFFER = SuggestionOffer(suggestion_id="sug_1", sku="bat-aa-4", name="AA batteries, pack of 4")


def gate(tmp_path: Path, clock: float = NOON_UTC, device: str = "speaker-1", **settings: object) -> SuggestionGate:
    made = SuggestionGate(tmp_path / f"{device}.suggestions.json", clock=lambda: clock)
    made.save(SuggestionSettings.model_validate({"opted_in": True, **settings}))
    return made


def test_a_device_declines_suggestions_until_its_user_opts_in(tmp_path: Path) -> None:
    fresh = SuggestionGate(tmp_path / "new.json", clock=lambda: NOON_UTC)
    answer = fresh.answer(OFFER, "speaker-1", busy=False)
    assert (answer.taken, answer.declined_reason) == (False, DeclineReason.OPTED_OUT)
    assert gate(tmp_path).answer(OFFER, "speaker-1", busy=False).taken is True


def test_the_edge_policy_can_turn_suggestions_off(tmp_path: Path) -> None:
    opted = gate(tmp_path)
    opted.edge = EdgePolicy(suggestions=False)
    assert opted.declined_for(busy=False) is DeclineReason.OPTED_OUT
    opted.edge = EdgePolicy(suggestions=True)
    assert opted.declined_for(busy=False) is None


def test_quiet_hours_are_kept_in_the_devices_own_time_zone(tmp_path: Path) -> None:
    assert gate(tmp_path, time_zone="UTC").declined_for(busy=False) is None  # 12:00
    assert gate(tmp_path, time_zone="America/New_York").declined_for(busy=False) is DeclineReason.QUIET_HOURS  # 07:00
    assert gate(tmp_path, time_zone="Asia/Shanghai").declined_for(busy=False) is None  # 20:00
    late = datetime(2026, 12, 7, 14, 30, tzinfo=UTC).timestamp()  # 22:30 in Shanghai
    assert gate(tmp_path, late, time_zone="Asia/Shanghai").declined_for(busy=False) is DeclineReason.QUIET_HOURS
    own = {"start": "12:00", "end": "13:00"}
    assert gate(tmp_path, quiet_hours=own).declined_for(busy=False) is DeclineReason.QUIET_HOURS


def test_a_daily_cap_holds_until_the_next_day(tmp_path: Path) -> None:
    capped = gate(tmp_path, daily_cap=2)
    capped.count()
    assert capped.declined_for(busy=False) is None
    capped.count()
    assert capped.declined_for(busy=False) is DeclineReason.CAP
    capped.clock = lambda: NOON_UTC + 86400
    assert capped.declined_for(busy=False) is None


def test_a_device_with_a_session_running_declines_as_busy(tmp_path: Path) -> None:
    answer = gate(tmp_path).answer(OFFER, "speaker-1", busy=True)
    assert (answer.taken, answer.declined_reason) == (False, DeclineReason.BUSY)


def test_the_messages_on_the_wire(tmp_path: Path) -> None:
    answer = gate(tmp_path).answer(OFFER, "speaker-1", busy=True)
    assert SuggestionResult.model_validate_json(answer.encode()) == answer
    assert json.loads(OFFER.encode())["type"] == "suggestion.offer"
    assert SuggestionOffer.model_validate_json(OFFER.encode()).initiated_by == "agent"
    with pytest.raises(ValueError, match="exactly when it is not taken"):
        SuggestionResult(suggestion_id="sug_1", device_id="speaker-1", taken=False, declined_reason=None)


def test_arbitration_picks_one_device_of_two_whatever_the_order() -> None:
    def taken(device: str, yes: bool = True) -> SuggestionResult:
        reason = None if yes else DeclineReason.QUIET_HOURS
        return SuggestionResult(suggestion_id="sug_1", device_id=device, taken=yes, declined_reason=reason)

    both = [taken("speaker-2"), taken("speaker-1")]
    assert pick_speaker(both) == pick_speaker(list(reversed(both))) == "speaker-1"
    assert pick_speaker(both, heard_db={"speaker-2": -20.0, "speaker-1": -45.0}) == "speaker-2"  # nearer its user
    assert pick_speaker([taken("speaker-1", yes=False), taken("speaker-2")]) == "speaker-2"
    assert pick_speaker([taken("speaker-1", yes=False)]) is None


async def test_over_the_bus_one_device_of_two_speaks_and_one_that_declined_never(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        url = (await stack.enter_async_context(EmbeddedBroker())).url
        early = gate(tmp_path, device="speaker-1", time_zone="America/New_York")  # 07:00 there: quiet hours
        later = gate(tmp_path, device="speaker-2")  # 12:00
        inboxes = []
        for device_id, its_gate in (("speaker-1", early), ("speaker-2", later)):
            device = await stack.enter_async_context(DeviceClient(url, device_id))
            inboxes.append(await stack.enter_async_context(SuggestionInbox(device, its_gate)))
        platform = await stack.enter_async_context(MqttBus(url, "platform"))
        results, speaker = await offer_suggestion(platform, OFFER, ["speaker-2", "speaker-1"], timeout=10)
        assert speaker == "speaker-2"
        assert [(r.device_id, r.declined_reason) for r in results] == [
            ("speaker-1", DeclineReason.QUIET_HOURS), ("speaker-2", None)
        ]  # fmt: skip
        early.save(early.settings.model_copy(update={"time_zone": "UTC"}))
        again = OFFER.model_copy(update={"suggestion_id": "sug_2"})
        results, speaker = await offer_suggestion(platform, again, ["speaker-1", "speaker-2"], timeout=10)
        assert speaker == "speaker-1" and all(r.taken for r in results)  # both took it: one speaks
        assert [len(inbox.answered) for inbox in inboxes] == [2, 2]
        _, nobody = await offer_suggestion(platform, OFFER, ["speaker-9"], timeout=0.3)
        assert nobody is None  # a device that does not answer takes no part
        policy = tmp_path / "policy.json"
        policy.write_text('{"suggestions": false}', encoding="utf-8")
        owned = await stack.enter_async_context(DeviceClient(url, "speaker-3", edge_policy=policy))
        await stack.enter_async_context(SuggestionInbox(owned, gate(tmp_path, device="speaker-3")))
        results, nobody = await offer_suggestion(platform, OFFER, ["speaker-3"], timeout=10)
        assert nobody is None and results[0].declined_reason is DeclineReason.OPTED_OUT  # the owner's switch holds


async def test_a_device_with_an_open_offer_declines_as_busy_until_its_session_ends(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        url = (await stack.enter_async_context(EmbeddedBroker())).url
        shop = await stack.enter_async_context(ShopBackend(url))
        device = await stack.enter_async_context(DeviceClient(url, "speaker-1", key=shop.provision("speaker-1")))
        inbox = await stack.enter_async_context(SuggestionInbox(device, gate(tmp_path)))
        platform = await stack.enter_async_context(MqttBus(url, "platform"))
        assert device.session_running is False
        offer = await device.ask("buy a bottle of milk")  # presented, awaiting its answer
        assert device.session_running is True
        results, speaker = await offer_suggestion(platform, OFFER, ["speaker-1"], timeout=10)
        assert speaker is None and results[0].declined_reason is DeclineReason.BUSY  # nobody is told to speak
        assert [r.declined_reason for _, r in inbox.answered] == [DeclineReason.BUSY]
        await device.answer(offer, Decision.DECLINE)
        assert device.session_running is False
        again = OFFER.model_copy(update={"suggestion_id": "sug_2"})
        results, speaker = await offer_suggestion(platform, again, ["speaker-1"], timeout=10)
        assert speaker == "speaker-1" and results[0].taken is True


@pytest.mark.parametrize(("locale", "reply"), [("en-US", "Stop suggestions!"), ("zh-CN", "别再推荐了。")])
def test_the_stop_phrase_turns_suggestions_off_on_that_device(tmp_path: Path, locale: str, reply: str) -> None:
    opted = gate(tmp_path)
    assert opted.stop_asked("confirm" if locale == "en-US" else "确认", locale) is False
    assert opted.settings.opted_in is True
    assert opted.stop_asked(reply, locale) is True
    assert opted.settings.opted_in is False
    assert opted.declined_for(busy=False) is DeclineReason.OPTED_OUT


def test_quiet_hours_that_are_not_times_are_refused() -> None:
    assert quiet_hours("21:30-07:00").start.hour == 21
    for bad in ("25:00-08:00", "22:00", "late-08:00", "22:00-22:00"):
        with pytest.raises(ConfigError):
            quiet_hours(bad)


async def test_a_suggestion_orders_only_after_the_usual_confirmation(tmp_path: Path) -> None:
    audit = tmp_path / "audit.db"
    spoken: list[str] = []
    declined = await run_suggestion("bat-aa-4", ["cancel"], at="12:00", audit=audit, present=spoken.append)
    assert declined.speaker == "speaker-1" and declined.order is None and declined.verification is None
    assert spoken[0].startswith("A suggestion from your shopping assistant: ")
    stopped = await run_suggestion("bat-aa-4", ["stop suggestions"], at="12:00", audit=audit)
    assert stopped.stopped is True and stopped.order is None
    ordered = await run_suggestion("bat-aa-4", ["confirm"], at="12:00", audit=audit)
    assert ordered.outcome == "ordered" and ordered.order is not None
    assert ordered.verification is not None and ordered.verification["initiated_by"] == "agent"
    report, verifications = verified_records(audit, "verification")
    assert report.ok
    assert [v.get("initiated_by") for v in verifications if v.get("accepted")] == ["agent"]
    _, offers = verified_records(audit, "suggestion.offer")
    assert len(offers) == 3 and {o["initiated_by"] for o in offers} == {"agent"}
    _, checkouts = verified_records(audit, "suggestion.checkout")  # each checkout a suggestion opened
    assert [c["initiated_by"] for c in checkouts] == ["agent"] * 3
    assert checkouts[-1]["checkout_id"] == ordered.verification["checkout_id"]


async def test_a_suggestion_in_quiet_hours_says_nothing_and_orders_nothing(tmp_path: Path) -> None:
    spoken: list[str] = []
    run = await run_suggestion("bat-aa-4", at="23:00", audit=tmp_path / "a.db", present=spoken.append)
    assert (run.outcome, run.declined_reason, run.speaker, spoken) == ("declined", "quiet_hours", None, [])
    _, results = verified_records(tmp_path / "a.db", "suggestion.result")
    assert [r["declined_reason"] for r in results] == ["quiet_hours"]


def test_the_mandate_claim_is_left_out_unless_a_suggestion() -> None:
    assert MandateClaims.model_fields["initiated_by"].default is None


def demo(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEVICE_SDK_STATE": str(state)}
    command = [sys.executable, "-m", "device_sdk.cli", "demo", "--json", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_the_demo_json_of_a_suggestion_declined_for_quiet_hours(tmp_path: Path) -> None:
    done = demo(tmp_path, "--suggest", "bat-aa-4", "--at", "23:00")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["initiated_by"], out["outcome"], out["declined_reason"]) == ("agent", "declined", "quiet_hours")
    assert out["presented"] == [] and out["order"] is None


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--suggest", "no-such-sku"), ErrorCode.ITEM_NOT_FOUND),
        (("--suggest", "bat-aa-4", "--to", "speaker-9"), ErrorCode.DEVICE_OFFLINE),
        (("--suggest", "bat-aa-4", "--quiet-hours", "22:00-8 am"), ErrorCode.BAD_CONFIG),
        (("--suggest", "bat-aa-4", "--at", "noon"), ErrorCode.BAD_CONFIG),
    ],
)
def test_bad_input_to_the_demo_is_refused_with_nothing_spoken_or_stored(
    tmp_path: Path, args: tuple[str, ...], code: ErrorCode
) -> None:
    done = demo(tmp_path, *args)
    assert done.returncode == 2
    out = json.loads(done.stdout)
    assert out["error"]["code"] == code.value and out["outcome"] is None and "presented" not in out
    assert not (tmp_path / "demo").exists()  # no store was opened


SPOKEN_STOPS = [("zh-CN", "别再推荐了。"), ("zh-CN", "不要再推荐了！"), ("en-US", "stop suggestions")]


@pytest.mark.parametrize(("locale", "written"), SPOKEN_STOPS)
async def test_a_spoken_stop_phrase_is_judged_a_stop_never_a_confirmation(locale: str, written: str) -> None:
    """The reply judge on what the first hearing wrote (Whisper's text in zh-CN, where it is the only
    hearing): a decline that stops suggestions; "confirm" and a contradicting Whisper are no stop."""

    async def first() -> str:
        return written

    judgement = await ReplyJudge(locale=locale).judge(b"\x00\x00" * 1600, first())
    assert (judgement.decision, judgement.stop) == (Decision.DECLINE, True)
    assert decide(written, Opinion.ACCEPT, None, locale)[0] is None  # the hearings contradict: ask again
    confirm = "确认" if locale == "zh-CN" else "yes confirm"
    assert decide(confirm, None, None, locale) == (Decision.CONFIRM, "an accept")  # no stop
    if locale == "en-US":  # Whisper writing the stop phrase over a heard accept vetoes it
        assert decide("yes confirm", opinion("Stop suggestions.", "yes confirm"), Verdict.ACCEPT)[0] is None
