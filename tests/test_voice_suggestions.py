"""A suggestion spoken by the real voice assistant and answered by voice: espeak-ng speech in the
room, pocketsphinx on the reply grammar with the stop phrases, the bus, the verifier, the audit log."""

from __future__ import annotations

import asyncio
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.consent.mandate import unverified_claims
from device_sdk.device.client import DeviceClient
from device_sdk.device.suggestions import SuggestionGate, SuggestionSettings
from device_sdk.platform.checkout.audit import trail
from device_sdk.protocol.fields import new_id
from device_sdk.protocol.suggestions import SuggestionOffer
from device_sdk.voice.assistant import Voice, VoiceAssistant, VoiceRun
from device_sdk.voice.engines import Hearing
from device_sdk.voice.sources import RATE, MicrophoneSource, Pcm
from device_sdk.voice.sphinx import SphinxEngine
from device_sdk.voice.tts import synthesize, trim_silence
from simulators.catalog import demo_catalog
from simulators.command_parser import CommandParser
from simulators.scenario import ShopBackend
from simulators.voice_user import RoomSource, VoiceUser, questions
from tests.test_voice import null_sink  # noqa: F401  (the virtual microphone)

SKU = "bat-aa-4"


@pytest.fixture(scope="module")
def sphinx() -> SphinxEngine:
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (./dev test installs it: apt-get install espeak-ng)")
    return SphinxEngine()


@pytest.fixture
async def backend() -> AsyncIterator[ShopBackend]:
    async with EmbeddedBroker() as broker, ShopBackend(broker.url, shared=False) as shop:
        yield shop


@pytest.fixture
def gate(tmp_path: Path) -> SuggestionGate:
    """A speaker's suggestion settings, opted in (suggestions are off by default)."""
    opted_in = SuggestionGate(tmp_path / "speaker.suggestions.json")
    opted_in.save(SuggestionSettings(opted_in=True))
    return opted_in


async def suggest(
    backend: ShopBackend, sphinx: SphinxEngine, gate: SuggestionGate, reply: str, device_id: str
) -> tuple[VoiceRun, bool, VoiceUser]:
    """The device took a suggestion of `SKU`; its user answers `reply` after the read-back."""
    key = await asyncio.to_thread(backend.provision, device_id)
    named = demo_catalog().product(SKU).named("en-US")  # type: ignore[union-attr]
    item = named.aliases[0] if named.aliases else named.name
    offer = SuggestionOffer(suggestion_id=new_id("sug"), sku=SKU, name=named.name)
    room = RoomSource()
    user = VoiceUser(room, b"", [trim_silence(synthesize(reply, speed=150))], prompts=questions("en-US"))
    async with DeviceClient(backend.url, device_id, topics=backend.topics, key=key) as device:
        vocabulary = CommandParser(backend.catalog).vocabulary()
        voice = Voice(output=user.output, synthesize=False)
        async with VoiceAssistant.with_hearing(device, Hearing.of(sphinx), vocabulary, room, voice=voice) as assistant:
            try:
                run, stopped = await asyncio.wait_for(
                    assistant.suggest(gate, offer, f"buy a {named.unit} of {item}", named.unit), 60
                )
            finally:
                room.close()
    return run, stopped, user


async def test_stop_suggestions_said_to_the_assistant_turns_them_off_and_orders_nothing(
    backend: ShopBackend, sphinx: SphinxEngine, gate: SuggestionGate
) -> None:
    run, stopped, user = await suggest(backend, sphinx, gate, "stop suggestions", "speaker-stop")
    assert user.heard[0].startswith("A suggestion from your shopping assistant: ")
    assert user.heard[1] == run.offer.readback  # type: ignore[union-attr]
    assert stopped and run.judgements[0].stop and run.outcome == "declined" and run.mandate is None
    assert user.heard[-1] == "OK, no more suggestions on this device."
    assert gate.settings.opted_in is False and gate.taken_today() == 1
    assert backend.checkout.orders == []


async def test_yes_said_to_a_suggestion_orders_with_initiated_by_agent_audited(
    backend: ShopBackend, sphinx: SphinxEngine, gate: SuggestionGate
) -> None:
    run, stopped, _ = await suggest(backend, sphinx, gate, "yes please buy it", "speaker-yes")
    assert not stopped and run.outcome == "ordered" and len(backend.checkout.orders) == 1
    assert unverified_claims(run.mandate)["initiated_by"] == "agent"  # type: ignore[arg-type]
    verified = [r for r in trail(backend.db.path, run.session_id) if r["kind"] == "verification"]
    assert [r.get("initiated_by") for r in verified if r.get("accepted")] == ["agent"]
    assert gate.settings.opted_in is True


@pytest.mark.usefixtures("null_sink")
async def test_stop_suggestions_said_into_the_virtual_microphone_is_heard_by_the_assistant(
    backend: ShopBackend, sphinx: SphinxEngine, gate: SuggestionGate, tmp_path: Path
) -> None:
    """The same session on a live source: the reply is played into the null sink and taken off its
    monitor (the virtual microphone) when the read-back ends."""
    wav = tmp_path / "stop.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(synthesize("stop suggestions", speed=150))
    said: list[str] = []
    opened = asyncio.Event()
    plays: list[asyncio.Task[int]] = []

    async def microphone() -> AsyncIterator[Pcm]:
        async for block in MicrophoneSource("pulse", block_ms=100):
            opened.set()  # the assistant listens: the user answers now
            yield block

    async def play() -> int:
        await opened.wait()
        player = await asyncio.create_subprocess_exec("paplay", "--device=mic_feed", str(wav))
        return await player.wait()

    async def output(text: str, pcm: bytes | None) -> None:
        said.append(text)
        if text.endswith(questions("en-US")) and not plays:
            plays.append(asyncio.create_task(play()))

    key = await asyncio.to_thread(backend.provision, "speaker-mic")
    named = demo_catalog().product(SKU).named("en-US")  # type: ignore[union-attr]
    item = named.aliases[0] if named.aliases else named.name
    offer = SuggestionOffer(suggestion_id=new_id("sug"), sku=SKU, name=named.name)
    async with DeviceClient(backend.url, "speaker-mic", topics=backend.topics, key=key) as device:
        vocabulary = CommandParser(backend.catalog).vocabulary()
        voice = Voice(output=output, synthesize=False)
        async with VoiceAssistant.with_hearing(
            device, Hearing.of(sphinx), vocabulary, microphone(), voice=voice
        ) as assistant:
            run, stopped = await asyncio.wait_for(
                assistant.suggest(gate, offer, f"buy a {named.unit} of {item}", named.unit), 30
            )
    assert plays and await plays[0] == 0
    assert stopped and run.answers == ["stop suggestions"] and run.outcome == "declined"
    assert said[-1] == "OK, no more suggestions on this device."
    assert gate.settings.opted_in is False and backend.checkout.orders == []
