"""An intent in the phone's language, or a refusal: a phone declares its locale (`device.info`),
and the bridge takes only intents in that language, so a command is never read by the parser of
a language its user did not choose (which could make a wrong cart of it)."""

from __future__ import annotations

from device_sdk.locale import locale_for
from device_sdk.protocol.errors import ErrorCode, IntentError

from .intents import OemIntent


def check_intent_locale(intent: OemIntent, declared: str) -> None:
    """`IntentError` (`unsupported_locale`) unless the intent's `extras.locale` is of the language
    the phone declared (`declared`: zh-CN takes zh, zh-Hans-CN...) and its query is written in it
    (`Locale.writes`: "buy two packs of AA batteries" tagged zh-CN is refused)."""
    phone = locale_for(declared)
    tag, query = intent.extras.locale, intent.extras.query
    if tag.split("-")[0].lower() != phone.language:
        raise IntentError(
            f"an intent in {tag} to a phone that declared {declared}",
            ErrorCode.UNSUPPORTED_LOCALE,
            intent_id=intent.intent_id,
        )
    if not phone.writes(query):
        raise IntentError(
            f"the query is not written in {declared} ({phone.language}): the phone reads only its own language",
            ErrorCode.UNSUPPORTED_LOCALE,
            intent_id=intent.intent_id,
        )
