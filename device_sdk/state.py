"""Where the SDK keeps its files by default: `$DEVICE_SDK_STATE`, else `$XDG_STATE_HOME/device-sdk`,
else `~/.local/state/device-sdk`."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from device_sdk.protocol.errors import ConfigError


def state_dir() -> Path:
    explicit = os.environ.get("DEVICE_SDK_STATE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(base).expanduser() / "device-sdk"


def default_database() -> Path:
    """The SQLite file of the checkout's verifier store and the audit log."""
    return state_dir() / "shop.db"


def demo_database() -> Path:
    """The demo's own SQLite file, `<state>/demo/shop.db`: its simulated devices' keys and its orders
    never enter the store and audit log that `serve` keeps for real devices."""
    return state_dir() / "demo" / "shop.db"


def default_key_file(device_id: str) -> Path:
    """A device's signing key, as `device-sdk keys create` writes it."""
    return state_dir() / "keys" / f"{device_id}.pem"


def write_file(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to a temporary file beside `path` with `mode`, fsync it, and rename it over `path`:
    readers see the old file or the new one, never a part, and a secret is never readable by others."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # the umask may have taken bits away
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return path
