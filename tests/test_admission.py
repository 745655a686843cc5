"""A gateway past its capacity refuses new sessions with `busy` at once; what is under way is served."""

from __future__ import annotations

import asyncio
import time

import pytest

from device_sdk.platform.gateway.admission import Admission, Capacity
from device_sdk.protocol.errors import ConfigError, ErrorCode, RemoteError, SessionError
from device_sdk.protocol.fields import Decision, Outcome
from device_sdk.protocol.messages import AgentRequest, CheckoutProposal
from simulators.agent_core import CatalogAgent
from simulators.scenario import ShopBackend
from tests.conftest import EmbeddedRestartable, keyed


async def test_a_loop_that_stays_behind_closes_the_door_and_a_lone_pause_does_not() -> None:
    admission = Admission(Capacity(max_lag=0.1, every=0.02))
    sampling = asyncio.create_task(admission.run())
    try:
        await asyncio.sleep(0.1)
        admission.check(0)  # an idle loop: admitted
        time.sleep(0.3)  # noqa: ASYNC251 (a lone pause, a garbage collection: the loop wakes 0.3 s late once)
        await asyncio.sleep(0.03)
        admission.check(0)  # what waited through it is served
        for _ in range(6):  # work that keeps the loop behind, sample after sample
            time.sleep(0.3)  # noqa: ASYNC251
            await asyncio.sleep(0)
            await asyncio.sleep(0.03)
        assert admission.lag > 0.1
        with pytest.raises(SessionError) as refused:
            admission.check(0)
        assert refused.value.code is ErrorCode.BUSY and "behind" in str(refused.value)
        for _ in range(200):  # the loop keeps time again: the average falls back, the door opens
            await asyncio.sleep(0.02)
            if admission.lag <= 0.1:
                break
        admission.check(0)
        assert admission.refused == 1
    finally:
        sampling.cancel()


def test_work_under_way_past_the_bound_is_refused_and_bad_capacities_are_named() -> None:
    admission = Admission(Capacity(max_active=3))
    admission.check(2)
    with pytest.raises(SessionError) as refused:
        admission.check(3)
    assert refused.value.code is ErrorCode.BUSY and "3 sessions under way" in str(refused.value)
    for bad in ({"max_lag": 0}, {"max_active": 0}, {"smoothing": 1.0}):
        with pytest.raises(ConfigError):
            Capacity(**bad)  # type: ignore[arg-type]


class HeldAgent(CatalogAgent):
    """The reference agent, holding each proposal until `release` is set: a slow agent core."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.asked = 0
        self.entered = asyncio.Event()

    async def propose(self, request: AgentRequest) -> CheckoutProposal:
        self.asked += 1
        self.entered.set()
        await self.release.wait()
        return await super().propose(request)


async def test_past_capacity_a_new_session_hears_busy_and_an_open_one_still_orders(
    embedded: EmbeddedRestartable,
) -> None:
    agent = HeldAgent()
    async with (
        ShopBackend(embedded.url, agent=agent, capacity=Capacity(max_active=1)) as shop,
        keyed(shop, embedded, "speaker-open") as open_,
        keyed(shop, embedded, "speaker-held") as held,
        keyed(shop, embedded, "speaker-late") as late,
    ):
        agent.release.set()
        offer = await open_.ask("buy milk")  # its session waits for the user: no work under way
        agent.release.clear()
        agent.entered.clear()
        holding = asyncio.create_task(held.ask("buy eggs"))  # the one session under way
        await asyncio.wait_for(agent.entered.wait(), 10)
        with pytest.raises(RemoteError) as refused:
            await late.ask("buy green tea")
        result = await open_.answer(offer, Decision.CONFIRM)  # a confirmation is never refused for load
        agent.release.set()
        second = await holding
        again = await late.ask("buy green tea")  # room again: served
    assert refused.value.code is ErrorCode.BUSY and "capacity" in str(refused.value)
    assert agent.asked == 3  # the refused request never reached the agent (nor waited for its timeout)
    assert result.outcome is Outcome.ORDERED and len(shop.checkout.orders) == 1
    assert second.request.proposal.lines[0].sku == "eggs-12"
    assert again.request.proposal.lines[0].sku == "tea-green-100"
    assert shop.gateway.admission.refused == 1
