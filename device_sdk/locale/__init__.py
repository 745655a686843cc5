"""Locales: what a device says and shows, and the replies it takes, in its user's language.

Each locale is one data file (`data/<tag>.json`): the read-back, lens card and phone sheet
templates, how an amount is written, and the exact reply phrases that confirm or decline. Adding
a locale is adding a file; no logic changes. A device declares its locale (`device.info`), sends it
with every request, and the proposal carries it, so the gateway, the device and the verifier all
compose the same text from the proposal alone.
"""

from .locales import DEFAULT_LOCALE, LOCALES, Locale, locale_for

__all__ = ["DEFAULT_LOCALE", "LOCALES", "Locale", "locale_for"]
