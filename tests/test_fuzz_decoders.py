"""Property tests over every decoder and the flow layer (the targets of fuzz/targets.py, which atheris
also runs, coverage-guided, by `./dev fuzz`): any bytes get an answer or the SDK's own error, never
another exception, and the invariants hold (an ack queues at most a window again, a stream is never
poisoned). The seed corpus checked in under fuzz/corpus runs too, so an input a fuzz run once
found stays a test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_sdk.media.audio import AudioChunk
from device_sdk.protocol import strict_json
from device_sdk.protocol.errors import ErrorCode, ProtocolError
from firmware_bridge.flow import MAX_RANGES, Ack, AckStatus
from fuzz.targets import TARGETS, run

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
SEEDS = sorted((name, path) for name in TARGETS for path in (CORPUS / name).iterdir())
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def prefixed(pieces: list[bytes]) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in pieces)


def test_finding_11_every_target_has_a_seed_corpus() -> None:
    assert {name for name, _ in SEEDS} == set(TARGETS)


@pytest.mark.parametrize(("name", "path"), SEEDS, ids=[f"{n}-{p.name[:8]}" for n, p in SEEDS])
def test_finding_11_the_seed_corpus_passes(name: str, path: Path) -> None:
    run(name, path.read_bytes())


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ
@given(data=st.binary(max_size=2048))
def test_finding_11_any_bytes_get_an_answer_or_the_sdks_error(name: str, data: bytes) -> None:
    run(name, data)


@pytest.mark.parametrize("name", sorted(TARGETS))
@FUZZ
@given(data=st.data())
def test_finding_11_any_mutation_of_a_seed_gets_an_answer_or_the_sdks_error(name: str, data: st.DataObject) -> None:
    seed = bytearray(data.draw(st.sampled_from([p for n, p in SEEDS if n == name])).read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, max(0, len(seed) - 1)))
        seed[at : at + data.draw(st.integers(0, 4))] = data.draw(st.binary(max_size=4))
    run(name, bytes(seed))


ranges = st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), max_size=MAX_RANGES)
acks = st.builds(
    lambda seq, status, end, missing: Ack(seq, status, end, tuple(missing)).encode(),
    st.sampled_from([0, 1, 0xFFFF]),
    st.sampled_from(list(AckStatus)),
    st.integers(0, 0xFFFF),
    ranges,
)


@FUZZ
@given(pieces=st.lists(acks, max_size=40))
def test_finding_11_no_sequence_of_acks_makes_the_sender_queue_more_than_a_window(pieces: list[bytes]) -> None:
    run("sender", prefixed(pieces))  # the target asserts the bound and that each frame goes once per ack


chunks = st.builds(
    lambda seq, offset, samples, last: AudioChunk(1, seq, offset, bytes(2 * samples), last).encode(),
    st.one_of(st.integers(0, 20), st.integers(0, 2**32 - 1)),
    st.one_of(st.integers(0, 20_000), st.integers(0, 2**64 - 1)),
    st.integers(0, 100),
    st.booleans(),
)


@FUZZ
@given(pieces=st.lists(chunks, max_size=30))
def test_finding_11_no_sequence_of_chunks_poisons_an_audio_stream(pieces: list[bytes]) -> None:
    run("audio_chunks", prefixed(pieces))  # the target asserts lost audio is bounded and honest chunks go on


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@FUZZ
@given(value=json_values)
def test_finding_11_strict_json_reads_what_json_writes_and_refuses_only_by_its_rules(value: Any) -> None:
    text = json.dumps(value).encode()
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 can carry it
        lone = True
    else:
        lone = False
    if lone or depth(value) > strict_json.MAX_DEPTH:
        with pytest.raises(ProtocolError) as caught:
            strict_json.loads(text)
        assert caught.value.code == ErrorCode.BAD_JSON
    else:
        assert strict_json.loads(text) == value


@FUZZ
@given(value=st.dictionaries(st.text(max_size=4), st.integers(), min_size=1, max_size=5), data=st.data())
def test_finding_9_duplicate_keys_anywhere_are_refused(value: dict[str, int], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(value)))
    body = json.dumps(value)[:-1] + f", {json.dumps(key)}: 1}}"
    nested = f'{{"outer": [{body}]}}'
    for text in (body, nested):
        with pytest.raises(ProtocolError) as caught:
            strict_json.loads(text)
        assert caught.value.code == ErrorCode.BAD_JSON and "appears twice" in caught.value.text
