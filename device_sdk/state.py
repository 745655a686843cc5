"""Where the SDK keeps its files by default: `$DEVICE_SDK_STATE`, else `$XDG_STATE_HOME/device-sdk`,
else `~/.local/state/device-sdk`."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    explicit = os.environ.get("DEVICE_SDK_STATE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(base).expanduser() / "device-sdk"


def default_database() -> Path:
    """The SQLite file of the checkout's verifier store and the audit log."""
    return state_dir() / "shop.db"


def default_key_file(device_id: str) -> Path:
    """A device's signing key, as `device-sdk keys create` writes it."""
    return state_dir() / "keys" / f"{device_id}.pem"
