"""Message models, the decoder's typed errors, and fuzzing of the decoder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_sdk.protocol.errors import ErrorCode, ProtocolError
from device_sdk.protocol.fields import MAX_PAYLOAD, Outcome
from device_sdk.protocol.messages import (
    MESSAGE_TYPES,
    AgentRequest,
    CheckoutProposal,
    Merchant,
    OrderResult,
    Ping,
    ProposalLine,
    decode,
    message_schemas,
)

SELLER = Merchant(id="m-fresh", name="FreshMart")


def proposal(**changes: object) -> CheckoutProposal:
    line = ProposalLine(
        sku="milk-1l", name="Whole milk, 1 litre", qty=2, unit="bottle", unit_price_minor=1250,
        line_total_minor=2500, seller=SELLER,
    )  # fmt: skip
    fields: dict[str, object] = dict(
        checkout_id="co_1", request_id="req_1", device_id="speaker-1", session_id="ses_1", merchant=SELLER,
        currency="CNY", lines=[line], total_minor=2500, created_at=1.0,
    )  # fmt: skip
    fields.update(changes)
    return CheckoutProposal.model_validate(fields)


def test_round_trip_keeps_every_field() -> None:
    original = proposal()
    decoded = decode(original.encode())
    assert decoded == original
    assert json.loads(original.encode())["type"] == "checkout.proposal"
    assert json.loads(original.encode())["v"] == 1


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"not json", ErrorCode.BAD_JSON),
        (b"\xff\xfe\x00", ErrorCode.BAD_JSON),
        (b"[1, 2]", ErrorCode.BAD_MESSAGE),
        (b'"ping"', ErrorCode.BAD_MESSAGE),
        (b"{}", ErrorCode.BAD_MESSAGE),
        (b'{"v": 1, "type": "launch.rocket"}', ErrorCode.UNKNOWN_TYPE),
        (b'{"v": 1, "type": "ping"}', ErrorCode.BAD_MESSAGE),
        (b'{"v": 1, "type": "ping", "seq": "one"}', ErrorCode.BAD_MESSAGE),
        (b'{"v": 1, "type": "ping", "seq": 1, "v": 2}', ErrorCode.BAD_JSON),  # a key twice: one reading or none
        (b'{"v": 1, "type": "agent.request", "request_id": "r", "device_id": "a/b", "session_id": "s", "text": "x"}',
         ErrorCode.BAD_MESSAGE),
        (b" " * (MAX_PAYLOAD + 1), ErrorCode.TOO_LARGE),
    ],
)  # fmt: skip
def test_bad_payloads_get_typed_errors(payload: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(payload)
    assert caught.value.code == code


def test_proposal_arithmetic_is_checked() -> None:
    with pytest.raises(ValueError, match="total_minor"):
        proposal(total_minor=1)
    good = proposal().model_dump(mode="json")
    good["lines"][0]["line_total_minor"] = 1
    with pytest.raises(ProtocolError, match="line_total_minor"):
        decode(json.dumps({**good, "total_minor": 1}).encode())


def test_order_id_exactly_when_ordered() -> None:
    with pytest.raises(ValueError, match="order_id"):
        OrderResult(session_id="s", outcome=Outcome.DECLINED, order_id="ord_1")
    with pytest.raises(ValueError, match="order_id"):
        OrderResult(session_id="s", outcome=Outcome.ORDERED)


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    assert decode(b'{"v": 1, "type": "ping", "seq": 3, "added_in_v1_1": true}') == Ping(seq=3)


def test_every_type_has_a_schema_and_the_cli_writes_them(tmp_path: Path) -> None:
    schemas = message_schemas()
    assert len(schemas) == len(MESSAGE_TYPES)
    assert schemas["checkout.proposal"]["properties"]["type"]["const"] == "checkout.proposal"
    out = subprocess.run(
        [sys.executable, "-m", "device_sdk.cli", "schema", "--out", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert f"wrote {len(MESSAGE_TYPES)} schemas" in out.stdout
    written = json.loads((tmp_path / "agent.request.schema.json").read_text())
    assert set(written["required"]) >= {"request_id", "device_id", "session_id", "text"}


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_fuzz_arbitrary_bytes_only_raise_protocol_error(payload: bytes) -> None:
    try:
        message = decode(payload)
    except ProtocolError as exc:
        code = exc.code
    else:
        code = None
        assert decode(message.encode()) == message
    assert code is None or code in set(ErrorCode)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from([m.model_fields["type"].default for m in MESSAGE_TYPES] + ["bogus"]),
    st.dictionaries(
        st.sampled_from(["seq", "session_id", "text", "lines", "device_id", "checkout_id", "v", "decision"]),
        json_values,
    ),
)
def test_fuzz_structured_payloads_only_raise_protocol_error(kind: str, fields: dict[str, object]) -> None:
    payload = json.dumps({**fields, "type": kind}).encode()
    try:
        message = decode(payload)
    except ProtocolError:
        return
    assert message.type == kind
    assert decode(message.encode()) == message


def test_agent_request_locale_and_sizes() -> None:
    with pytest.raises(ValueError, match="text"):
        AgentRequest(request_id="r", device_id="d", session_id="s", text="")
    with pytest.raises(ValueError, match="locale"):
        AgentRequest(request_id="r", device_id="d", session_id="s", text="x", locale="../etc")
