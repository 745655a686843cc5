"""`device-sdk eval voice`: spoken cases through the whole pipeline, scored.

Each case is synthesised with espeak-ng (or read from `command_wav`/`reply_wav`) and runs through
the real parts: a room source, endpointing, ASR, a device client on the bus, the gateway, the
reference agent, the read-back, the reply dialog, a signed mandate, the consent verifier and the
checkout stand-in. One device per case (the risk policy's velocity and daily caps are per device).

Scores, as the case format defines them:
- `task_success`: the cart equals `expect` and the outcome equals `expect_outcome`. The cart is
  the proposal the device presented; when the agent refused before proposing (a blocked
  category), it is what the agent read from the heard command.
- `false_confirmations`: orders placed where `expect_outcome` is not `ordered`.
- `latency_ms`: from the last sample of the command to the proposal ready on the device
  (end-of-speech detection included); real time only with `--realtime`.
- `asr_rtf`: recognition time over audio recognised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.device.client import DeviceClient
from device_sdk.protocol.errors import AgentError, ConfigError, ErrorCode
from device_sdk.voice.asr import AsrEngine
from device_sdk.voice.assistant import VoiceRun
from device_sdk.voice.engines import engine_named
from device_sdk.voice.grammar import Vocabulary
from device_sdk.voice.sources import read_wav
from device_sdk.voice.tts import synthesize, trim_silence

from .command_parser import CommandParser
from .scenario import ShopBackend
from .voice_user import converse


class Line(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str
    qty: int = Field(ge=1, le=99)


class VoiceCase(BaseModel):
    """One line of a cases file (the format of `voice-public.jsonl`)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    kind: str = Field(pattern="^(single|multi|policy)$")
    command: str = ""
    expect: list[Line]
    reply: str = ""
    expect_outcome: str = Field(pattern="^(ordered|declined|not_confirmed|step_up_required|blocked)$")
    voice: str = "en-us"
    speed: int = Field(default=160, ge=80, le=450)
    command_wav: str | None = None
    reply_wav: str | None = None


def load_cases(path: str | Path) -> list[VoiceCase]:
    """Cases from a JSON Lines file; `ConfigError` naming the line of anything malformed."""
    cases: list[VoiceCase] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = VoiceCase.model_validate_json(line)
        except ValidationError as exc:
            raise ConfigError(f"{path}:{number}: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}") from None
        if not case.command and not case.command_wav:
            raise ConfigError(f"{path}:{number}: a case needs command or command_wav")
        cases.append(case)
    return cases


def case_audio(case: VoiceCase, base: Path) -> tuple[bytes, bytes | None]:
    """The command and reply as 16 kHz PCM: recorded WAVs where the case gives them, else espeak-ng."""
    if case.command_wav:
        command = read_wav(base / case.command_wav).tobytes()
    else:
        command = synthesize(case.command, voice=case.voice, speed=case.speed)
    reply: bytes | None = None
    if case.reply_wav:
        reply = read_wav(base / case.reply_wav).tobytes()
    elif case.reply:
        reply = synthesize(case.reply, voice=case.voice, speed=case.speed)
    return trim_silence(command), trim_silence(reply) if reply is not None else None


@dataclass
class CaseResult:
    case: VoiceCase
    run: VoiceRun
    cart: list[dict[str, Any]]
    latency_ms: float | None
    orders: int

    @property
    def outcome(self) -> str:
        return self.run.outcome or "not_understood"

    @property
    def success(self) -> bool:
        expect = sorted((line.sku, line.qty) for line in self.case.expect)
        return sorted((c["sku"], c["qty"]) for c in self.cart) == expect and self.outcome == self.case.expect_outcome

    @property
    def false_confirmation(self) -> bool:
        return self.orders > 0 and self.case.expect_outcome != "ordered"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.case.id,
            "kind": self.case.kind,
            "said": self.case.command,
            "heard": self.run.command,
            "heard_replies": self.run.answers,
            "cart": self.cart,
            "outcome": self.outcome,
            "expect_outcome": self.case.expect_outcome,
            "success": self.success,
            "latency_ms": self.latency_ms,
            "barge_in": self.run.barge_in,
        }


@dataclass
class EvalReport:
    results: list[CaseResult]
    realtime: bool
    engine: str
    asr_seconds: float = 0.0
    audio_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def _share(self, kind: str | None) -> float | None:
        chosen = [r for r in self.results if kind is None or r.case.kind == kind]
        return round(sum(r.success for r in chosen) / len(chosen), 4) if chosen else None

    def as_dict(self) -> dict[str, Any]:
        latencies = sorted(r.latency_ms for r in self.results if r.latency_ms is not None)
        return {
            "cases": len(self.results),
            "engine": self.engine,
            "realtime": self.realtime,
            "task_success": self._share(None),
            "single_task_success": self._share("single"),
            "multi_task_success": self._share("multi"),
            "policy_task_success": self._share("policy"),
            "false_confirmations": sum(r.false_confirmation for r in self.results),
            "latency_ms": {
                "p50": round(statistics.median(latencies), 1) if latencies else None,
                "p95": round(_percentile(latencies, 0.95), 1) if latencies else None,
            },
            "asr_rtf": round(self.asr_seconds / self.audio_seconds, 4) if self.audio_seconds else None,
            "results": [r.as_dict() for r in self.results],
        }


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def run_case(
    backend: ShopBackend,
    engine: AsrEngine,
    vocabulary: Vocabulary,
    parser: CommandParser,
    case: VoiceCase,
    base: Path,
    *,
    device_id: str,
    realtime: bool,
) -> CaseResult:
    command, reply = await asyncio.to_thread(case_audio, case, base)
    key = await asyncio.to_thread(backend.provision, device_id)
    orders_before = len(backend.checkout.orders)
    async with DeviceClient(backend.url, device_id, topics=backend.topics, key=key) as device:
        run, user = await converse(device, engine, vocabulary, command, [reply] if reply else [], realtime=realtime)
    room = user.room
    cart: list[dict[str, Any]] = []
    if run.offer is not None:
        cart = [{"sku": line.sku, "qty": line.qty} for line in run.offer.request.proposal.lines]
    elif run.command and run.error is not None and run.error.code not in (ErrorCode.NOT_UNDERSTOOD,):
        with contextlib.suppress(AgentError):
            cart = [{"sku": line.product.sku, "qty": line.qty} for line in parser.parse(run.command)]
    latency = None
    if run.rendered_at is not None and room.spoken:
        latency = round((run.rendered_at - room.sample_time(room.spoken[0][1])) * 1000, 1)
    return CaseResult(case, run, cart, latency, len(backend.checkout.orders) - orders_before)


async def run_eval(
    cases_path: str | Path,
    *,
    engine: str = "sphinx",
    model: str | None = None,
    realtime: bool = False,
    limit: int | None = None,
    progress: Callable[[CaseResult], None] | None = None,
) -> EvalReport:
    cases = load_cases(cases_path)[:limit]
    base = Path(cases_path).parent
    asr = await asyncio.to_thread(engine_named, engine, model)
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(EmbeddedBroker())
        backend = await stack.enter_async_context(ShopBackend(broker.url, shared=False))
        parser = CommandParser(backend.catalog)
        vocabulary = parser.vocabulary()
        report = EvalReport([], realtime, engine)
        for number, case in enumerate(cases):
            result = await run_case(
                backend, asr, vocabulary, parser, case, base, device_id=f"eval-{number}", realtime=realtime
            )
            report.results.append(result)
            report.asr_seconds += result.run.asr_seconds
            report.audio_seconds += result.run.audio_seconds
            if progress is not None:
                progress(result)
    return report


def report_json(report: EvalReport) -> str:
    return json.dumps(report.as_dict(), indent=2)
