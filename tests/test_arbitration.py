"""Multi-device wake-word arbitration: two devices of one room hear one wake word, one session opens.

The state machine alone (with a hand-driven clock), then the gateway on a real broker with two
devices waking within the window, many times over, then two voice assistants in one room that
hear the same spoken wake phrase at different loudness."""

from __future__ import annotations

import asyncio
import itertools
import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_sdk.device.client import DeviceClient
from device_sdk.platform.checkout.audit import trail
from device_sdk.platform.gateway.arbitration import Arbiter, Contender
from device_sdk.protocol.errors import ErrorCode, RemoteError
from device_sdk.protocol.messages import Wake, WakeResult
from device_sdk.voice.assistant import Voice, VoiceAssistant, VoiceConfig
from device_sdk.voice.listener import WakeWord, loudness_db
from device_sdk.voice.tts import trim_silence
from simulators.command_parser import CommandParser
from simulators.scenario import ShopBackend
from simulators.voice_user import RoomSource
from tests.conftest import Restartable


def wake(device: str, confidence: float, energy: float, n: int = 0) -> Contender:
    return Contender(device, Wake(wake_id=f"wk-{device}-{n}", session_id=f"ses-{device}-{n}",
                                  confidence=confidence, energy_db=energy))  # fmt: skip


# the state machine ---------------------------------------------------------------------------


def expected_winner(wakes: list[tuple[str, float, float]], margin: float = 0.1) -> str:
    """The rule, written out again: about as confident as the best (within the margin), then loudest, then id."""
    best = max(confidence for _, confidence, _ in wakes)
    candidates = [w for w in wakes if w[1] >= best - margin]
    return sorted(candidates, key=lambda w: (-w[2], w[0]))[0][0]


def test_confidence_then_energy_then_device_id_decide() -> None:
    cases = [
        ([wake("a", 0.6, -30), wake("b", 0.9, -40)], "b"),  # clearly more confident, though quieter
        ([wake("a", 0.85, -20), wake("b", 0.9, -40)], "a"),  # about as confident: the louder
        ([wake("a", 0.9, -30), wake("b", 0.9, -20)], "b"),  # as confident: the louder
        ([wake("b", 0.9, -20), wake("a", 0.9, -20)], "a"),  # a tie: the lower device id
    ]
    for contenders, expected in cases:
        arbiter = Arbiter(0.3)
        first, opened = arbiter.offer("kitchen", contenders[0], now=10.0)
        second, joined_new = arbiter.offer("kitchen", contenders[1], now=10.2)
        assert opened and not joined_new and first is second
        results = dict(arbiter.close(first))
        assert [d for d, r in results.items() if r.granted] == [expected]
        assert {r.winner for r in results.values()} == {expected}
        assert {r.session_id for r in results.values()} == {c.wake.session_id for c in contenders}


@given(
    st.lists(
        st.tuples(st.floats(0, 1), st.floats(-120, 0), st.sampled_from(["s-1", "s-2", "s-3", "s-4"])),
        min_size=1,
        max_size=4,
        unique_by=lambda t: t[2],
    )
)
def test_the_winner_does_not_depend_on_arrival_order(wakes: list[tuple[float, float, str]]) -> None:
    winners = set()
    for order in itertools.permutations(wakes):
        arbiter = Arbiter(0.3)
        round_ = None
        for i, (confidence, energy, device) in enumerate(order):
            round_, _ = arbiter.offer(None, wake(device, confidence, energy), now=i * 0.05)
        assert round_ is not None
        results = arbiter.close(round_)
        assert sum(r.granted for _, r in results) == 1 and len(results) == len(wakes)
        winners.add(next(d for d, r in results if r.granted))
    assert len(winners) == 1


def test_rooms_are_arbitrated_apart_and_a_late_wake_opens_its_own_round() -> None:
    arbiter = Arbiter(0.3)
    kitchen, _ = arbiter.offer("kitchen", wake("a", 0.5, -20), now=0.0)
    hall, opened = arbiter.offer("hall", wake("b", 0.5, -20), now=0.1)
    assert opened and hall is not kitchen
    late, opened = arbiter.offer("kitchen", wake("c", 0.9, -10), now=0.45)  # 450 ms after the first
    assert opened and late is not kitchen
    assert [r.granted for _, r in arbiter.close(kitchen)] == [True]
    assert [r.granted for _, r in arbiter.close(late)] == [True]


def test_a_resent_wake_keeps_its_answer_and_a_loser_cannot_win_by_resending() -> None:
    arbiter = Arbiter(0.3)
    loser, winner = wake("a", 0.2, -40), wake("b", 0.9, -20)
    round_, _ = arbiter.offer(None, loser, now=0.0)
    arbiter.offer(None, winner, now=0.1)
    arbiter.offer(None, loser, now=0.2)  # the same wake again inside the round: counted once
    assert len(round_.contenders) == 2
    arbiter.close(round_)
    again = arbiter.decided("a", loser.wake.wake_id)
    assert again is not None and not again.granted and again.winner == "b"
    assert arbiter.decided("a", "wk-never") is None


def test_another_wake_of_a_contending_device_is_answered_and_not_granted() -> None:
    arbiter = Arbiter(0.3)
    first = wake("a", 0.9, -10, n=1)
    round_, _ = arbiter.offer(None, first, now=0.0)
    arbiter.offer(None, wake("b", 0.9, -30), now=0.05)
    arbiter.offer(None, wake("a", 0.9, -10, n=2), now=0.1)  # a second detection of the same utterance
    results = arbiter.close(round_)
    assert [(d, r.wake_id, r.granted) for d, r in results] == [
        ("a", "wk-a-1", True), ("b", "wk-b-0", False), ("a", "wk-a-2", False)
    ]  # fmt: skip


def test_a_window_out_of_range_is_refused() -> None:
    for window in (0, -1, 1.5, 60):
        with pytest.raises(ValueError, match="window"):
            Arbiter(window)


# the gateway on a real broker ----------------------------------------------------------------


async def _wake_later(device: DeviceClient, delay: float, confidence: float, energy: float) -> WakeResult:
    await asyncio.sleep(delay)
    return await device.wake(confidence, energy)


async def test_two_devices_waking_within_the_window_open_one_session_every_time(broker: Restartable) -> None:
    rng = random.Random(6)
    async with (
        ShopBackend(broker.url) as shop,
        DeviceClient(broker.url, "speaker-a", room="kitchen") as a,
        DeviceClient(broker.url, "speaker-b", room="kitchen") as b,
        DeviceClient(broker.url, "speaker-c", room="hall") as c,
    ):
        for device in (a, b, c):
            await device.wake(1.0, -20.0)  # the gateway takes the devices and learns their rooms
        for trial in range(20):
            confidence = [round(rng.uniform(0.6, 1.0), 2) for _ in range(2)]
            energy = [round(rng.uniform(-50, -10), 1) for _ in range(2)]
            if trial % 5 == 0:
                confidence[1], energy[1] = confidence[0], energy[0]  # a tie: the device id decides
            gap = rng.uniform(0.0, 0.15)  # the second hears it up to 150 ms later (the window is 300 ms)
            first_a = rng.random() < 0.5
            delays = (0.0, gap) if first_a else (gap, 0.0)
            results = await asyncio.gather(
                _wake_later(a, delays[0], confidence[0], energy[0]),
                _wake_later(b, delays[1], confidence[1], energy[1]),
            )
            granted = [r.granted for r in results]
            assert granted.count(True) == 1, (trial, results)
            expected = expected_winner(
                [("speaker-a", confidence[0], energy[0]), ("speaker-b", confidence[1], energy[1])]
            )
            assert {r.winner for r in results} == {expected}, (trial, results)
        alone = await c.wake(0.1, -60.0)  # the hall is another room: nobody contends
        assert alone.granted and alone.winner == "speaker-c"
        last = next(r for r in results if r.granted)
        records = trail(shop.db.path, last.session_id)  # the choice is on the session's audit trail
    assert [r["kind"] for r in records] == ["arbitration"]
    assert records[0]["device_id"] == last.winner and records[0]["room"] == "kitchen"
    assert sorted(c[0] for c in records[0]["contenders"]) == ["speaker-a", "speaker-b"]


async def test_a_device_in_no_room_contends_with_the_others_in_no_room(broker: Restartable) -> None:
    async with (
        ShopBackend(broker.url),
        DeviceClient(broker.url, "tv-1") as tv,
        DeviceClient(broker.url, "speaker-1") as speaker,
    ):
        await asyncio.gather(tv.wake(1.0, -20.0), speaker.wake(1.0, -20.0))  # warm up: one round already
        results = await asyncio.gather(tv.wake(0.7, -30.0), speaker.wake(0.7, -12.0))
    assert [r.granted for r in results] == [False, True]
    assert results[0].winner == "speaker-1"


async def test_the_device_that_lost_cannot_open_the_session_anyway(embedded: Restartable) -> None:
    async with (
        ShopBackend(embedded.url) as shop,
        DeviceClient(embedded.url, "speaker-a", room="kitchen", key=shop.provision("speaker-a")) as a,
        DeviceClient(embedded.url, "speaker-b", room="kitchen", key=shop.provision("speaker-b")) as b,
    ):
        await asyncio.gather(a.wake(1.0, -20.0), b.wake(1.0, -20.0))  # the gateway learns the rooms
        won, lost = await asyncio.gather(a.wake(0.9, -15.0), b.wake(0.9, -35.0))
        assert won.granted and not lost.granted and lost.winner == "speaker-a"
        with pytest.raises(RemoteError) as refused:  # a device that ignores the answer
            await b.ask("buy two packs of AA batteries", session_id=lost.session_id, timeout=10)
        assert refused.value.code is ErrorCode.NOT_CHOSEN
        offer = await a.ask("buy two packs of AA batteries", session_id=won.session_id, timeout=10)
        assert offer.session_id == won.session_id
    assert shop.checkout.orders == []


# two voice assistants in one room ------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_the_nearer_speaker_takes_the_spoken_wake_word_and_the_other_listens_again(
    embedded: Restartable,
) -> None:
    from tests.test_voice import need, speech  # espeak-ng, skipped with a reason where it is missing

    need("espeak-ng", "espeak-ng")
    from device_sdk.voice.sphinx import SphinxEngine

    sphinx = await asyncio.to_thread(SphinxEngine)
    phrase = trim_silence(speech("hey shop"))
    samples = np.frombuffer(phrase, dtype="<i2")
    far = (samples * 0.4).astype("<i2").tobytes()  # the same words, 8 dB quieter
    assert loudness_db(phrase) - loudness_db(far) == pytest.approx(7.96, abs=0.05)
    async with ShopBackend(embedded.url) as shop:
        vocabulary = CommandParser(shop.catalog).vocabulary()
        rooms = {"speaker-near": RoomSource(realtime=True), "speaker-far": RoomSource(realtime=True)}
        runs: dict[str, list[str]] = {name: [] for name in rooms}
        wakes: dict[str, WakeWord] = {}

        async def listen(name: str) -> None:
            async with DeviceClient(shop.url, name, room="kitchen", key=shop.provision(name)) as device:
                await device.wake(1.0, -20.0)  # the gateway knows the device and its room
                assistant = VoiceAssistant(
                    device, sphinx, vocabulary, rooms[name], voice=Voice(synthesize=False), config=VoiceConfig()
                )
                wakes[name] = WakeWord(sphinx, "hey shop")
                async for run in assistant.sessions(wakes[name]):
                    runs[name].append(run.session_id)
                    rooms[name].close()  # one session is all this test needs
                await assistant.aclose()

        tasks = [asyncio.create_task(listen(name)) for name in rooms]
        await asyncio.sleep(1.0)  # both are listening
        rooms["speaker-near"].speak(phrase)
        rooms["speaker-far"].speak(far)
        await asyncio.sleep(3.0)  # the wake word, the window, the answer; the winner awaits its command
        rooms["speaker-far"].close()
        rooms["speaker-near"].close()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert all(len(w.detections) == 1 for w in wakes.values()), "both speakers heard the wake phrase"
    assert len(runs["speaker-near"]) == 1 and runs["speaker-far"] == []
