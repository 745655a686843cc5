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


def test_issue_19_the_verifier_keeps_parsed_only_the_checkouts_still_open(tmp_path: Path) -> None:
    """The 10-minute bench's RSS grew 7.8 KB a session without end: the verifier kept the parsed
    proposal and terms of every checkout it opened (up to 100,000), used or closed."""
    for shop in open_shop(tmp_path / "shop.db"):
        shop.enroll("speaker-3")
        ordered, declined, still_open = (shop.offer(make_proposal(d)) for d in ("speaker-1", "speaker-2", "speaker-3"))
        completion = shop.confirm(ordered)
        result = shop.complete(completion)
        assert result.outcome is Outcome.ORDERED
        shop.verifier.cancel(declined.checkout_id, Outcome.DECLINED, "the user declined")
        assert list(shop.verifier._parsed) == [still_open.checkout_id]  # used and closed: dropped
        assert shop.complete(completion) == result  # a resend: answered from the store, the same order
        assert shop.complete(shop.confirm(still_open)).outcome is Outcome.ORDERED
        assert shop.verifier._parsed == {} and len(shop.charges) == 2  # the resend charged nothing


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


async def test_issue_19_calls_waiting_on_their_commit_share_one_transaction(tmp_path: Path) -> None:
    """The verifier's blocking calls run on the database's waiting threads (`Database.in_thread`), as
    many as a batch holds: on asyncio's default pool (cores + 4) at most six shared a commit and the
    rest queued unseen, which capped a gateway's sessions per second (docs/scale.md, "Overload")."""
    from device_sdk.platform.checkout.database import Database

    async with Database(tmp_path / "store.db") as db:
        db.ensure_schema(["CREATE TABLE IF NOT EXISTS t (n INTEGER)"])
        release = asyncio.Event()
        loop = asyncio.get_running_loop()

        def hold(conn: Any) -> None:  # the writer is busy with an earlier batch meanwhile
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)

        holding = asyncio.wrap_future(db.submit(hold))
        before = db.batches

        def write(n: int) -> int:  # a blocking call, as `ConsentVerifier.open` is
            return db.call(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (n,)).rowcount)

        calls = [asyncio.create_task(db.in_thread(write, n)) for n in range(40)]
        for _ in range(500):  # until every call's job is queued behind the busy writer (or 5 s)
            if db._jobs.qsize() >= 40:
                break
            await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.gather(*calls) == [1] * 40
        await holding
        assert db.batches - before <= 2  # the busy batch and one more for all forty
