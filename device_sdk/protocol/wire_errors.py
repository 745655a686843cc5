"""The protocol error a payload that failed validation gives: the code says what was wrong
(not JSON, no type, an unknown type, another protocol version, a bad field)."""

from __future__ import annotations

from pydantic import ValidationError

from .errors import ErrorCode, ProtocolError
from .fields import PROTOCOL_VERSION


def first_error(exc: ValidationError, *prefix: str) -> str:
    """The first of a validation's errors as `where: what` (`prefix` goes before the field path)."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in (*prefix, *first["loc"]))
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def protocol_error(exc: ValidationError) -> ProtocolError:
    """The protocol's own error for a payload that did not validate as a message, with its code."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    whole = first.get("input") if not first["loc"] else None
    if isinstance(whole, dict) and "v" in whole and whole["v"] != PROTOCOL_VERSION:
        return ProtocolError("unsupported protocol version (this side speaks v1)", ErrorCode.UNSUPPORTED_VERSION)
    kind = first["type"]
    where = ".".join(str(part) for part in first["loc"])
    if kind in ("json_invalid", "json_type"):
        return ProtocolError(f"not JSON: {first['msg']}", ErrorCode.BAD_JSON)
    if kind == "extra_forbidden":
        return ProtocolError(f"{where}: a field this side does not know, in a hashed message", ErrorCode.BAD_MESSAGE)
    if kind == "model_attributes_type":
        return ProtocolError("a message is a JSON object", ErrorCode.BAD_MESSAGE)
    if kind == "union_tag_invalid":
        return ProtocolError(f"unknown message type: {first.get('ctx', {}).get('tag')}", ErrorCode.UNKNOWN_TYPE)
    if kind == "union_tag_not_found":
        return ProtocolError("message has no 'type'", ErrorCode.BAD_MESSAGE)
    if any(err["loc"][1:] == ("v",) for err in errors if len(err["loc"]) == 2):
        return ProtocolError("unsupported protocol version (this side speaks v1)", ErrorCode.UNSUPPORTED_VERSION)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return ProtocolError(f"{where + ': ' if where else ''}{first['msg']}{more}")
