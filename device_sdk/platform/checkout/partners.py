"""Which hardware partner and device model each device came from, as provisioning recorded it.

`device-sdk provision DEVICE --partner P --model M` (or `keys create ... --partner P --model M`)
records it; every order's audit record then names the partner and model of the device the offer was
made for, taken from here, never from what the device says about itself on the bus. The partners'
revenue report (`partner_report`) sums those records.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.topics import check_id


class Conn(Protocol):
    """What these functions need of a store connection (SQLite's, or the PostgreSQL one)."""

    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...


SCHEMA = (
    """CREATE TABLE IF NOT EXISTS device_partners (
        device_id TEXT PRIMARY KEY,
        partner TEXT NOT NULL,
        model TEXT NOT NULL,
        set_at REAL NOT NULL
    )""",
)


def given_partner(partner: str | None, model: str | None) -> tuple[str, str] | None:
    """`--partner P --model M` checked: both or neither, each an id (1 to 64 of A-Z a-z 0-9 _ . -)."""
    if (partner is None) != (model is None):
        raise ConfigError("--partner and --model go together")
    if partner is None or model is None:
        return None
    return check_id(partner, "partner"), check_id(model, "model")


def set_partner(conn: Conn, device_id: str, partner: str, model: str) -> None:
    """Record (or replace) the partner and model `device_id` was provisioned as."""
    check_id(partner, "partner")
    check_id(model, "model")
    conn.execute(
        "INSERT INTO device_partners (device_id, partner, model, set_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET partner = excluded.partner, model = excluded.model,"
        " set_at = excluded.set_at",
        (device_id, partner, model, time.time()),
    )


def partner_of(conn: Conn, device_id: str) -> tuple[str, str] | None:
    """`(partner, model)` of `device_id` as provisioned, or None."""
    row = conn.execute("SELECT partner, model FROM device_partners WHERE device_id = ?", (device_id,)).fetchone()
    return (row[0], row[1]) if row else None


def attribution(conn: Conn, device_id: str) -> dict[str, str]:
    """The fields an order's audit record takes: `partner` and `model`, or none for a device
    provisioned with no partner."""
    found = partner_of(conn, device_id)
    return {"partner": found[0], "model": found[1]} if found else {}
