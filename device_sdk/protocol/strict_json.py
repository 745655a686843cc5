"""JSON as the SDK reads it from outside: one reading of every document, or a `ProtocolError(bad_json)`.

Python's `json` and pydantic's parser both take the last of two equal keys, so `{"type": "ping",
"type": "pong"}` is a pong to one reader and maybe a ping to another; `json` also takes `NaN` and
`Infinity`, strings with lone surrogates (which no UTF-8 encoder can write back), and recurses until
`RecursionError` on deep nesting. `loads` refuses all of these before anything reads the value:

- text that is not UTF-8 (bytes are never guessed as UTF-16 or UTF-32), or a byte order mark;
- a key twice in one object;
- nesting deeper than `MAX_DEPTH` arrays and objects (counted before parsing, so no recursion);
- `NaN`, `Infinity`, `-Infinity`;
- a string, key or value, with a lone surrogate (`"\\ud800"`).

`check` does the same and returns nothing: for a document a pydantic model then validates from its bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import ErrorCode, ProtocolError

MAX_DEPTH = 32
"""Arrays and objects inside each other: far deeper than any message the SDK defines."""

_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
"""A string (to its closing quote, or to the end when it has none: one pass, no backtracking) or a bracket."""


def _refuse(text: str) -> ProtocolError:
    return ProtocolError(text, ErrorCode.BAD_JSON)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _refuse(f"the key {key[:64]!r} appears twice in one object")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise _refuse(f"{name} is not a JSON number")


def _text(data: str | bytes | bytearray | memoryview) -> str:
    if isinstance(data, str):
        return data
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _refuse(f"JSON is text or bytes, not {type(data).__name__}")
    try:
        return bytes(data).decode("utf-8")  # strict: no invalid sequences, no encoded surrogates
    except UnicodeDecodeError as exc:
        raise _refuse(f"not UTF-8 at byte {exc.start}") from None


def _depth(text: str, limit: int) -> None:
    depth = 0
    for token in _TOKENS.finditer(text):
        kind = token.group()
        if kind == "[" or kind == "{":
            depth += 1
            if depth > limit:
                raise _refuse(f"nested deeper than {limit} arrays and objects")
        elif kind == "]" or kind == "}":
            depth -= 1


def _no_surrogates(value: Any) -> None:
    """Every string in `value` encodes as UTF-8 (`value` is at most `MAX_DEPTH` deep: no recursion limit)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _refuse("a string holds a lone surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_surrogates(key)
            _no_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _no_surrogates(item)


def loads(data: str | bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH) -> Any:
    """The value of one JSON document, or `ProtocolError(bad_json)` saying what is wrong with it."""
    text = _text(data)
    if text.startswith("\ufeff"):
        raise _refuse("a byte order mark before the JSON")
    _depth(text, max_depth)
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except ProtocolError:
        raise
    except RecursionError:  # not reached under the depth limit; kept so no input can raise it
        raise _refuse(f"nested deeper than {max_depth} arrays and objects") from None
    except ValueError as exc:
        raise _refuse(f"not JSON: {str(exc).splitlines()[0]}") from None
    _no_surrogates(value)
    return value


def check(data: str | bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH) -> None:
    """Refuse what `loads` refuses; for a document a model then validates from its own bytes."""
    loads(data, max_depth=max_depth)
