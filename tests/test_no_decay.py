"""Issue 19, "no decay": what the gateway and the checkout stand-in do per request does not grow with
their history. These tests check the structures (indexes, heaps, bounds), not timings."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from device_sdk.device.client import DeviceClient
from device_sdk.platform.gateway.deadlines import Deadlines
from device_sdk.platform.gateway.flow import SessionFlow, SessionKey
from device_sdk.platform.gateway.gateway import Gateway
from device_sdk.platform.gateway.session import Session, State
from device_sdk.protocol.errors import DeviceSdkError
from device_sdk.protocol.fields import Outcome, WireMessage, new_id
from device_sdk.protocol.messages import OrderResult
from simulators.catalog import demo_catalog
from simulators.checkout import CheckoutStandIn

from .consent_kit import make_proposal, open_shop


async def test_issue_19_the_stand_in_indexes_its_orders_by_id_and_keeps_only_the_newest(tmp_path: Path) -> None:
    for shop in open_shop(tmp_path / "shop.db"):
        stand_in = CheckoutStandIn(shop.verifier, demo_catalog(), keep_orders=2)
        results = []
        for device_id in ("speaker-1", "speaker-2", "speaker-3"):
            if device_id not in shop.keys:
                shop.enroll(device_id)
            completion = shop.confirm(shop.offer(make_proposal(device_id)))
            results.append(await stand_in.complete(completion))
            assert await stand_in.complete(completion) == results[-1]  # the same key: the same order, once
        assert stand_in.placed == 3
        assert isinstance(stand_in.recent, OrderedDict)  # looked up by order id, not scanned
        assert list(stand_in.recent) == [r.order_id for r in results[1:]]  # bounded: the oldest went
        assert stand_in.orders == results[1:]


def test_issue_19_deadlines_pop_only_what_is_due() -> None:
    deadlines: Deadlines[int] = Deadlines()
    for i in range(1000):
        deadlines.at(float(i), i)
    deadlines.at(5.0, 5)  # scheduled twice: popped once
    assert deadlines.due(9.5) == list(range(10))
    assert len(deadlines) == 990 and deadlines.next_at() == 10.0


class Sent:
    """What a flow sent and refused, kept (the flow's own send and refuse)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, WireMessage]] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def send(self, device_id: str, message: WireMessage) -> None:
        self.messages.append((device_id, message))

    def refuse(
        self, device_id: str | None, exc: DeviceSdkError, *, ref: str | None = None, session_id: str | None = None
    ) -> None:
        raise AssertionError(f"refused {exc}")

    def in_session(self, key: SessionKey, coro: Coroutine[Any, Any, None]) -> None:
        self.tasks.append(asyncio.create_task(coro))


async def test_issue_19_ended_sessions_keep_only_their_result_and_the_sweep_visits_only_the_due(
    tmp_path: Path,
) -> None:
    for shop in open_shop(tmp_path / "shop.db"):
        sent = Sent()
        flow = SessionFlow(
            CheckoutStandIn(shop.verifier), audit=None, send=sent.send, refuse=sent.refuse,
            in_session=sent.in_session, confirm_timeout=120.0, checkout_timeout=5.0, keep_ended=60.0,
        )  # fmt: skip
        offer = shop.offer()
        sessions = []
        for i in range(100):
            session = flow.hold(Session(new_id("ses"), f"speaker-{i % 7}"))
            session.offer, session.state = offer, State.AWAITING_CONFIRMATION
            result = OrderResult(session_id=session.session_id, checkout_id=offer.checkout_id,
                                 outcome=Outcome.DECLINED, reason="declined")  # fmt: skip
            await flow._end(session, result)
            session.touched = float(i)  # ended at second i, for the sweep below
            sessions.append(session)
        ended = sessions[0]
        assert ended.offer is None and ended.issued is None and ended.confirmed is None and ended.result is not None
        assert flow.ended == 100 and flow.open_sessions == 0 and len(flow.deadlines) == 100
        flow.deadlines = Deadlines()  # re-schedule at the ended times set above
        for session in sessions:
            flow.deadlines.at(session.touched + flow.keep_ended, (session.device_id, session.session_id))
        flow.sweep(0.0, 60.0 + 9.5)  # ten are due: only they are looked at and forgotten
        assert len(flow.sessions) == 90 and len(flow.deadlines) == 90 and flow.ended == 90
        flow.sweep(0.0, 1e9)
        assert flow.sessions == {} and len(flow.deadlines) == 0 and flow._of_device == {}


async def test_issue_19_a_session_lock_lives_only_while_the_session_has_handlers(tmp_path: Path) -> None:
    for shop in open_shop(tmp_path / "shop.db"):
        gateway = Gateway("mqtt://127.0.0.1:1", CheckoutStandIn(shop.verifier))
        done = asyncio.Event()

        async def handler(until: asyncio.Event) -> None:
            await until.wait()

        gateway._in_session(("speaker-1", "ses-1"), handler(done))
        gateway._in_session(("speaker-1", "ses-1"), handler(done))
        await asyncio.sleep(0)
        assert list(gateway._locks) == [("speaker-1", "ses-1")]
        done.set()
        await asyncio.gather(*gateway._tasks)
        assert gateway._locks == {} and gateway._waiting == {}


def test_issue_19_devices_heartbeat_rarely_by_default() -> None:
    device = DeviceClient("mqtt://127.0.0.1:1", "speaker-1")
    assert device.heartbeat >= 30.0  # liveness is MQTT's keepalive, last will and retained status
    assert device.pong_timeout > 2 * device.heartbeat  # one lost pong does not declare the controller gone
