"""The conformance test mode's one message: what a conformance run (`device-sdk conformance`) asks of
a device under test on its down topic. A device honours it only when it was started with its test
mode allowed; any other device ignores it (docs/conformance.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .fields import Decision, Id, WireMessage

ControlAction = Literal["ask", "drop", "reconnect", "audio"]


class ConformanceControl(WireMessage):
    """`ask`: the device's user says `text` (sent verbatim in an `agent.request` of a new session) and
    answers the offer with `answer` (`no_answer`: the user says nothing); `drop`: end the connection
    without DISCONNECT, as a crash would, then reconnect; `reconnect`: say offline, disconnect cleanly
    and connect again; `audio`: stream about a second of audio in a new session."""

    type: Literal["conformance.control"] = "conformance.control"
    run_id: Id = Field(description="The conformance run that asks.")
    action: ControlAction
    text: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    answer: Decision | None = None
