"""The protocol's requirements, each with the id that docs/protocol.md ("Requirements") defines, and
what a conformance run reports for each: pass, fail or skipped, with the evidence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["MUST", "SHOULD"]
Result = Literal["pass", "fail", "skipped"]


@dataclass(frozen=True)
class Requirement:
    id: str
    level: Level
    text: str


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("R-STATUS-RETAINED", "MUST", "a retained `device.status` with `online: true`, at QoS 1"),
    Requirement(
        "R-INFO-RETAINED",
        "MUST",
        "a retained `device.info` naming the device, its kind and capabilities, the same as its status says",
    ),
    Requirement(
        "R-INFO-PUBLIC-KEY", "MUST", "`device.info` carries `public_key`: the Ed25519 key its mandates verify with"
    ),
    Requirement("R-HEARTBEAT", "MUST", "`ping` on the up topic with an increasing `seq`, answered or not"),
    Requirement("R-HEARTBEAT-INTERVAL", "SHOULD", "a `ping` at least every 35 s (the SDK: 30 s), at most 2 a second"),
    Requirement("R-REQUEST-FORM", "MUST", "an `agent.request` names the device of its topic and the device's locale"),
    Requirement("R-SESSION-IDS", "MUST", "every session a new `session_id`, every request a new `request_id`"),
    Requirement("R-SESSION-MATCH", "MUST", "an offer for a request the device did not send is not answered"),
    Requirement(
        "R-CONFIRM-BINDING",
        "MUST",
        "a confirmation names the offer's session, checkout and checkout hash "
        "unchanged, by a modality the offer allows",
    ),
    Requirement(
        "R-CONFIRM-DIGEST",
        "MUST",
        "the confirmation's and the mandate's display digest are those of what "
        "the SDK composes for its modality (read-back, lens card or sheet)",
    ),
    Requirement("R-MANDATE-SIGNED", "MUST", "a confirmation carries a mandate that verifies with the device's key"),
    Requirement("R-MANDATE-HASH", "MUST", "the mandate binds the checkout id and hash, amount, currency and payee"),
    Requirement(
        "R-MANDATE-TERMS",
        "MUST",
        "the mandate carries the offer's nonce, audience and payment handler, "
        "the device's id and session, within the lifetime allowed",
    ),
    Requirement("R-IDEMPOTENCY-KEY", "MUST", "a confirmation carries an `idempotency_key`"),
    Requirement("R-RESEND", "SHOULD", "an unanswered confirmation is sent again, the same bytes"),
    Requirement("R-DECLINE-NO-MANDATE", "MUST", "a declined offer is answered `decline`, with no mandate"),
    Requirement("R-NO-ANSWER-NO-MANDATE", "MUST", "an offer the user does not answer gets no mandate"),
    Requirement(
        "R-REFUSE-TAMPERED", "MUST", "an offer whose read-back is not the SDK's for its proposal: not confirmed"
    ),
    Requirement("R-REFUSE-EXPIRED", "MUST", "an offer past its `expires_at` is not confirmed"),
    Requirement(
        "R-ERROR-SURVIVES",
        "MUST",
        "unreadable messages and unknown types on the down topic are ignored: the device keeps serving",
    ),
    Requirement("R-ERROR-ENDS-REQUEST", "SHOULD", "an `error` about a request ends it: the request is not sent again"),
    Requirement("R-WILL", "MUST", "an unclean drop leaves `device.status` `online: false` (the last will)"),
    Requirement("R-RECONNECT", "MUST", "after a drop the device connects again and says `online: true`"),
    Requirement("R-RESUBSCRIBE", "MUST", "after a drop the device hears its down topic again"),
    Requirement("R-CLEAN-OFFLINE", "SHOULD", "a device going away cleanly says `online: false` first"),
    Requirement(
        "R-AUDIO-FRAMING",
        "MUST",
        "audio: `audio.start`, chunks of version 1 with the stream's tag, `seq` "
        "from 0 and contiguous sample offsets, then `audio.stop` with the samples sent",
    ),
)
"""Every requirement, in the order a run reports them."""

BY_ID = {r.id: r for r in REQUIREMENTS}


@dataclass
class Outcome:
    requirement: Requirement
    result: Result
    evidence: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.requirement.id,
            "level": self.requirement.level,
            "result": self.result,
            "evidence": self.evidence,
        }


class Findings:
    """What one run found, by requirement: the first word on each counts (a later `skipped` never
    overrides a result), and every requirement not judged is reported skipped."""

    def __init__(self) -> None:
        self._found: dict[str, Outcome] = {}

    def record(self, rid: str, passed: bool | None, evidence: str) -> None:
        """`passed` True or False, or None: skipped, with why."""
        if rid in self._found:
            return
        result: Result = "skipped" if passed is None else "pass" if passed else "fail"
        self._found[rid] = Outcome(BY_ID[rid], result, evidence)

    def has(self, rid: str) -> bool:
        return rid in self._found

    def outcomes(self, why_not: str) -> list[Outcome]:
        return [self._found.get(r.id) or Outcome(r, "skipped", why_not) for r in REQUIREMENTS]


def report(device_id: str, kind: str | None, outcomes: list[Outcome], seconds: float) -> dict[str, Any]:
    """The JSON report: `{device_id, kind, requirements: [{id, level, result, evidence}], passed, failed,
    skipped, seconds}`."""
    count = {k: sum(o.result == k for o in outcomes) for k in ("pass", "fail", "skipped")}
    return {
        "device_id": device_id,
        "kind": kind,
        "requirements": [o.as_json() for o in outcomes],
        "passed": count["pass"],
        "failed": count["fail"],
        "skipped": count["skipped"],
        "seconds": round(seconds, 1),
    }


def musts_held(result: dict[str, Any]) -> bool:
    """Every MUST that ran passed (the command's exit 0)."""
    return not any(r["level"] == "MUST" and r["result"] == "fail" for r in result["requirements"])
