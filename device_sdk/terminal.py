"""Text for a person's terminal: what a device said, shown as text and never run as a terminal command.

A device decides what it hears and asks for; an escape sequence in it (`ESC [2J` clears the screen,
`ESC ]0;...BEL` retitles the window, a bidi override reorders what the operator reads) must reach the
operator as visible characters. `printable` escapes them (`\\x1b`, `\\u202e`); every human-facing
output (the command lines, the timeline, the logs) goes through it. JSON output keeps the raw text:
`json.dumps` escapes the C0 controls itself, and a program reads it, not a terminal.
"""

from __future__ import annotations

import logging
import re

UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0 controls (ESC, BEL, CR, ...), DEL, C1 controls (CSI, OSC, ...)
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi marks, embeddings, overrides and isolates
    "\u2028\u2029"  # line and paragraph separators
    "\ud800-\udfff]"  # lone surrogates: a terminal cannot be given them at all
)
"""The characters a terminal may act on or that change how the rest of a line reads."""


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with every character of `UNSAFE` written as its escape (`\\x1b`, `\\u202e`); with
    `newlines`, a line feed stays one (for multi-line text such as a lens card)."""
    if not UNSAFE.search(text):
        return text
    if newlines:
        return "\n".join(UNSAFE.sub(_escape, line) for line in text.split("\n"))
    return UNSAFE.sub(_escape, text)


def unsafe_characters(text: str, *, newlines: bool = False) -> list[str]:
    """The distinct characters of `text` that `printable` would escape, in order of first use."""
    found = dict.fromkeys(UNSAFE.findall(text))
    if newlines:
        found.pop("\n", None)
    return list(found)


class TerminalFormatter(logging.Formatter):
    """A log formatter for people: each record's line is `printable` (so a device's text in a log
    message cannot drive the terminal nor forge a second log line); a traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return printable(super().formatException(ei), newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), newlines=True)


def log_to_stderr(verbose: bool) -> None:
    """The command lines' logging: INFO with `verbose`, else WARNING, as `TerminalFormatter` lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(TerminalFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
