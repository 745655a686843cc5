"""A suggestion the device took, spoken by its voice assistant and answered by voice.

The assistant asks the agent for the suggested reorder's checkout, says that this is a suggestion
("A suggestion from your shopping assistant: ...") and the read-back in the device's locale, then
listens on the reply grammar with the stop phrases (`reply_grammar(stop=STOP_PHRASES)`). A stop
("stop suggestions") turns suggestions off on the device (`SuggestionGate.stop_asked`), says so and
declines; the usual confirmation signs with `initiated_by: "agent"`; a decline or nothing heard
declines, and nothing is ordered.
"""

from __future__ import annotations

import time

from device_sdk.device.suggestions import SuggestionGate, suggestion_text
from device_sdk.protocol.errors import RemoteError
from device_sdk.protocol.fields import Decision
from device_sdk.protocol.suggestions import SuggestionOffer

from .assistant import VoiceAssistant, VoiceRun, refusal_outcome
from .endpointing import Utterance
from .grammar import Grammar, reply_grammar
from .replies import STOP_PHRASES, ReplyDialog
from .reply_audio import reply_text


async def speak_suggestion(
    assistant: VoiceAssistant, gate: SuggestionGate, suggestion: SuggestionOffer, ask: str, unit: str
) -> tuple[VoiceRun, bool]:
    """Say `suggestion` (its checkout asked for with the command `ask`; `unit` the product's unit) and
    take the answer: the run, and whether the user turned suggestions off."""
    device, run, locale = assistant.device, VoiceRun(command=ask), assistant.locale
    timeout = assistant.config.request_timeout_s
    try:
        run.offer = await device.ask(ask, session_id=run.session_id, timeout=timeout)
    except RemoteError as exc:
        run.error, run.outcome = exc, refusal_outcome(exc)
        return run, False
    gate.count()
    grammar = reply_grammar(stop=STOP_PHRASES)
    stopped = False
    assistant.listener.end_after(assistant.config.reply_end_s)
    try:
        await assistant.voice.say(suggestion_text(suggestion, locale.tag, unit))
        await assistant.voice.say(run.offer.readback)
        run.rendered_at = time.monotonic()
        dialog = ReplyDialog(reprompts=assistant.config.reprompts, locale=locale.tag)
        decision: Decision | None = None
        while decision is None:
            utterance = await assistant.listener.next(assistant.config.reply_timeout_s)
            judged: Decision | None = None
            reply: str | None = None
            if utterance is not None:
                judgement = await assistant.judge.judge(utterance.pcm, _first(assistant, utterance, grammar, run))
                run.judgements.append(judgement)
                reply = judgement.first
                run.answers.append(reply)
                judged = judgement.decision
                if judgement.stop and gate.stop_asked(reply, locale.tag):
                    stopped = True
                    await assistant.voice.say(locale.suggestion.stopped)
                    decision = Decision.DECLINE
                    break
            decision = dialog.decide(judged, reply)
            if decision is None:
                await assistant.voice.say(locale.readback.reprompt)
    finally:
        assistant.listener.end_after(None)
    run.decision = Decision.DECLINE if decision is Decision.NO_ANSWER else decision
    if run.decision is Decision.CONFIRM:
        run.modality = assistant.config.modality
        run.mandate = device.sign(run.offer, run.modality, initiated_by="agent")
    heard = " / ".join(run.answers) or None
    run.result = await device.answer(run.offer, run.decision, modality=assistant.config.modality, heard=heard,
                                     mandate=run.mandate, timeout=timeout)  # fmt: skip
    run.finished_at = time.monotonic()
    run.outcome = run.result.outcome.value
    return run, stopped


async def _first(assistant: VoiceAssistant, utterance: Utterance, grammar: Grammar, run: VoiceRun) -> str:
    recognition = await assistant.recognise(utterance, grammar, run)
    run.replies.append(recognition)
    return reply_text(recognition, utterance.pcm)
