"""`device-sdk discover`: what is on the LAN as a table (live on a terminal) or JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from device_sdk.terminal import printable

from .browse import Browser, ChangeKind, Found, ordered
from .records import Interfaces


def describe(found: Found) -> str:
    """The details column of the discovery table."""
    if found.device is not None:
        info = found.device
        parts = [info.kind.value, "caps=" + (",".join(c.value for c in info.capabilities) or "-")]
        if info.firmware is not None:
            parts.append(f"fw={info.firmware}")
        if info.room is not None:
            parts.append(f"room={info.room}")
        return " ".join([*parts, f"proto={info.protocol}"])
    if found.gateway is not None:
        return f"broker={found.gateway.broker or '-'} proto={found.gateway.protocol}"
    return f"url={found.broker}"


def table(found: Sequence[Found]) -> list[str]:
    """The discovery table, one line a service, with a header."""
    rows = [("KIND", "NAME", "ADDRESS", "DETAILS")]
    for item in found:
        ident = item.device.device_id if item.device else item.gateway.gateway_id if item.gateway else item.instance
        rows.append((item.kind, ident, f"{','.join(item.addresses)}:{item.port}", describe(item)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip() for r in rows]
    return [printable(line) for line in lines]  # names and TXT records come from anyone on the LAN


@dataclass
class _LiveTable:
    """Redraws the table in place on a terminal (ANSI: cursor up, erase below)."""

    out: TextIO
    lines: int = 0

    def draw(self, found: Sequence[Found], status: str) -> None:
        text = [*table(found), status] if found else [status]
        up = f"\x1b[{self.lines}F" if self.lines else ""
        self.out.write(up + "\x1b[J" + "\n".join(text) + "\n")
        self.out.flush()
        self.lines = len(text)


async def run_discover(
    timeout: float = 3.0,
    interfaces: Interfaces = None,
    *,
    as_json: bool = False,
    live: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`device-sdk discover`: browse devices, gateways and brokers for `timeout` seconds, then print
    them: one JSON array, or a table (with `live`, redrawn as services come and go). Services whose
    TXT record does not validate are reported on `err`. Exits 0, also when nothing was found."""
    out = out or sys.stdout
    err = err or sys.stderr
    screen = _LiveTable(out) if live and not as_json else None
    async with Browser(interfaces=interfaces) as browser:
        if screen is not None:
            screen.draw([], f"browsing for {timeout:g} s...")
        async for change in browser.changes(timeout):
            if change.kind is ChangeKind.REFUSED and change.error is not None:
                print(printable(f"skipped {change.name}: {change.error}"), file=err)
            if screen is not None:
                screen.draw(ordered(browser.found.values()), f"browsing for {timeout:g} s...")
        found = ordered(browser.found.values())
    if as_json:
        print(json.dumps([item.as_dict() for item in found]), file=out)
    elif screen is not None:
        screen.draw(found, f"{len(found)} found")
    elif found:
        print("\n".join(table(found)), file=out)
    if not found:
        print("nothing found", file=err)
    return 0
