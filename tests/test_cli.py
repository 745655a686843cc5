"""The console script as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.bus.mosquitto import MosquittoServer, free_port


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command here keeps its files (keys, audit log) in a directory of the test's own."""
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path))
    return tmp_path


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_demo_json_orders_on_the_embedded_broker() -> None:
    done = cli("demo", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "ordered"
    assert out["order"]["order_id"].startswith("ord_")
    assert [(line["sku"], line["qty"]) for line in out["proposal"]["lines"]] == [("bat-aa-4", 2), ("milk-1l", 1)]
    assert out["order"]["total_minor"] == out["proposal"]["total_minor"] == 3830
    kinds = [step["type"] for step in out["timeline"]]
    for kind in ("agent.request", "checkout.proposal", "confirmation.request", "confirmation.result", "order.result"):
        assert kind in kinds
    assert kinds.index("checkout.proposal") < kinds.index("confirmation.result") < kinds.index("order.result")
    assert out["mandate"]["id"].startswith("man_") and out["mandate"]["token"].count(".") == 2
    verification = out["verification"]
    assert verification["accepted"] is True and verification["mandate_id"] == out["mandate"]["id"]
    assert verification["order_id"] == out["order"]["order_id"]
    assert {"signature", "nonce", "expiry", "display", "single_use", "policy"} <= set(verification["checks"])


def test_demo_writes_the_audit_log_it_is_given(tmp_path: Path) -> None:
    log = tmp_path / "audit.db"
    out = json.loads(cli("demo", "--json", "--audit", str(log)).stdout)
    assert out["audit"] == str(log) and out["outcome"] == "ordered"
    assert cli("audit", "verify", str(log)).returncode == 0
    shown = cli("audit", "show", str(log), "--session", out["proposal"]["session_id"], "--json")
    kinds = [record["kind"] for record in json.loads(shown.stdout)]
    assert kinds == ["proposal", "terms", "rendering", "confirmation", "verification", "order", "result"]


@pytest.mark.parametrize(
    ("say", "outcome", "code"),
    [
        ("buy a smartphone", "step_up_required", "step_up_required"),  # 5,999 CNY: within the daily cap
        ("buy two yoga mats and a pair of running shoes", "step_up_required", "step_up_required"),
        ("buy a bottle of red wine", "blocked", "category_blocked"),
    ],
)
def test_demo_refusals_carry_their_outcome_and_code(say: str, outcome: str, code: str) -> None:
    done = cli("demo", "--json", "--say", say)
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert out["outcome"] == outcome and out["order"] is None
    assert code in ((out["verification"] or {}).get("code"), (out["error"] or {}).get("code"))


def test_keys_create_list_and_revoke(state: Path) -> None:
    made = cli("keys", "create", "kitchen-speaker")
    assert made.returncode == 0, made.stderr
    key_file = state / "keys" / "kitchen-speaker.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = cli("keys", "create", "kitchen-speaker", "--out", str(state / "second.pem"))  # a rotation
    assert again.returncode == 0
    assert cli("keys", "create", "kitchen-speaker").returncode == 2  # never overwrites a key file
    listed = json.loads(cli("keys", "list", "--json").stdout)
    assert [k["status"] for k in listed] == ["retired", "active"]
    assert cli("keys", "revoke", "kitchen-speaker").returncode == 0
    assert {k["status"] for k in json.loads(cli("keys", "list", "--json").stdout)} == {"revoked"}


@pytest.mark.parametrize(
    ("args", "outcome"),
    [
        (["--reply", "cancel"], "declined"),
        (["--reply", "hmm", "--reply", "wait"], "not_confirmed"),
        (["--say", "buy a spaceship"], "not_confirmed"),
    ],
)
def test_demo_exits_non_zero_without_an_order(args: list[str], outcome: str) -> None:
    done = cli("demo", "--json", *args)
    assert done.returncode == 1
    out = json.loads(done.stdout)
    assert out["outcome"] == outcome
    assert out["order"] is None


async def test_demo_on_an_external_mosquitto(mosquitto: MosquittoServer) -> None:
    done = cli("demo", "--broker", str(mosquitto.url), "--say", "order three bags of coffee beans")
    assert done.returncode == 0, done.stderr
    assert "3 bags of Coffee beans, 500 g, from FreshMart, 204.00 CNY." in done.stdout
    assert "outcome: ordered" in done.stdout


def test_demo_with_an_unreachable_broker_says_so() -> None:
    done = cli("demo", "--json", "--broker", f"mqtt://127.0.0.1:{free_port()}", timeout=60)
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["code"] == "not_connected"


async def test_bench_bus_prints_its_figures(mosquitto: MosquittoServer) -> None:
    done = cli("bench", "bus", "--json", "-n", "50", "--concurrency", "8", "--mosquitto", str(mosquitto.url))
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    for broker in ("embedded", "mosquitto"):
        rtt = figures[broker]["rtt_ms"]
        assert 0 < rtt["p50"] <= rtt["p95"] <= rtt["p99"]
        assert figures[broker]["per_s"] > 0


def test_bench_consent_prints_its_figures() -> None:
    done = cli("bench", "consent", "--json", "-n", "40", "--devices", "4", "--audit-records", "300,1000")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["verifications_per_s"] > 0 and figures["completions_per_s"] > 0
    assert set(figures["audit_verify_s"]) == {"300", "1000"}


def test_keys_create_refuses_an_id_that_is_not_topic_safe(state: Path) -> None:
    done = cli("keys", "create", "../escape")
    assert done.returncode == 2 and "device id" in done.stderr
    assert not (state / "escape.pem").exists() and not (state / "keys").exists()


def test_simulate_glasses_saves_the_lens_and_exits_by_the_outcome(tmp_path: Path) -> None:
    png = tmp_path / "lens.png"
    done = cli("simulate", "glasses", "--tap", "confirm", "--png", str(png), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["outcome"] == "ordered" and out["gesture"] == "tap" and png.stat().st_size > 1000
    cancelled = cli("simulate", "glasses", "--tap", "cancel", "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["orders"] == 0


def test_bench_ble_prints_its_figures() -> None:
    done = cli("bench", "ble", "--repeats", "1", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["att_mtu"] == 247 and out["min_att_packets"] == -(-out["bytes"] // 244)
    assert out["efficiency"] >= 0.99 and out["att_packets"] < out["all_att_packets"]
