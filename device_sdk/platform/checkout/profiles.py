"""What each device was provisioned as, and the modalities that kind of device can confirm by.

A mandate names its modality, but the device that signs it does not choose what that modality
means: the verifier takes the signer's kind and capabilities as provisioning recorded them
(`device-sdk provision ... --kind glasses`), never as the device describes itself on the bus, and
refuses a modality the device cannot have (`modality_not_supported`): a lens tap needs glasses with
a display, a phone sheet a phone; a device with no provisioned kind confirms nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from device_sdk.protocol.errors import ConfigError, ConsentError, ErrorCode
from device_sdk.protocol.fields import Capability, DeviceKind, Modality

from .sql import Connection

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS device_profiles (
        device_id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        capabilities TEXT NOT NULL,
        set_at REAL NOT NULL
    )""",
)

C = Capability
DEFAULT_CAPABILITIES: dict[DeviceKind, frozenset[Capability]] = {
    DeviceKind.SPEAKER: frozenset({C.MIC, C.AUDIO_OUT, C.BUTTON, C.TEXT}),
    DeviceKind.GLASSES: frozenset({C.MIC, C.AUDIO_OUT, C.DISPLAY, C.CAMERA, C.TOUCH, C.BUTTON}),
    DeviceKind.PHONE: frozenset({C.MIC, C.AUDIO_OUT, C.DISPLAY, C.CAMERA, C.TOUCH, C.TEXT}),
    DeviceKind.OTHER: frozenset(),
}
"""What a device of each kind has when provisioning names no capabilities."""


@dataclass(frozen=True)
class Needs:
    """What a device must be, and have, to confirm by one modality."""

    kinds: frozenset[DeviceKind] | None
    """The kinds that can (None: any)."""
    all_of: frozenset[Capability] = frozenset()
    any_of: frozenset[Capability] = frozenset()

    def met_by(self, profile: DeviceProfile) -> bool:
        return (
            (self.kinds is None or profile.kind in self.kinds)
            and self.all_of <= profile.capabilities
            and (not self.any_of or bool(self.any_of & profile.capabilities))
        )


MODALITY_NEEDS: dict[Modality, Needs] = {
    Modality.VOICE: Needs(None, frozenset({C.MIC, C.AUDIO_OUT})),
    Modality.TEXT: Needs(None, frozenset({C.TEXT})),
    Modality.BUTTON: Needs(None, frozenset({C.BUTTON, C.AUDIO_OUT})),  # a press after the spoken read-back
    Modality.VOICE_PIN: Needs(None, any_of=frozenset({C.MIC, C.TEXT})),  # the PIN said or typed
    Modality.LENS_TAP: Needs(frozenset({DeviceKind.GLASSES}), frozenset({C.DISPLAY}), frozenset({C.TOUCH, C.BUTTON})),
    Modality.PHONE_SHEET: Needs(frozenset({DeviceKind.PHONE}), frozenset({C.DISPLAY, C.TOUCH})),
}


@dataclass(frozen=True)
class DeviceProfile:
    """A device's kind and capabilities as provisioned."""

    kind: DeviceKind
    capabilities: frozenset[Capability]

    @classmethod
    def of(cls, kind: DeviceKind | str, capabilities: Iterable[Capability | str] | None = None) -> DeviceProfile:
        """The profile of a `kind` device with `capabilities` (default: what that kind has), or
        `ConfigError` for a name that is no kind or capability."""
        try:
            known = DeviceKind(kind)
            caps = DEFAULT_CAPABILITIES[known] if capabilities is None else frozenset(map(Capability, capabilities))
        except ValueError as exc:
            raise ConfigError(f"not a device kind or capability: {exc}") from None
        return cls(known, caps)

    def modalities(self) -> list[Modality]:
        """Every modality a device of this profile can confirm by."""
        return [m for m in Modality if MODALITY_NEEDS[m].met_by(self)]

    def as_dict(self) -> dict[str, object]:
        return {"kind": self.kind.value, "capabilities": sorted(c.value for c in self.capabilities)}


def set_profile(conn: Connection, device_id: str, profile: DeviceProfile) -> None:
    """Record (or replace) what `device_id` was provisioned as."""
    conn.execute(
        "INSERT INTO device_profiles (device_id, kind, capabilities, set_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (device_id) DO UPDATE SET kind = excluded.kind, capabilities = excluded.capabilities,"
        " set_at = excluded.set_at",
        (device_id, profile.kind.value, ",".join(sorted(profile.capabilities)), time.time()),
    )


def profile_of(conn: Connection, device_id: str) -> DeviceProfile | None:
    row = conn.execute("SELECT kind, capabilities FROM device_profiles WHERE device_id = ?", (device_id,)).fetchone()
    if row is None:
        return None
    return DeviceProfile(DeviceKind(row[0]), frozenset(Capability(c) for c in row[1].split(",") if c))


def check_fits(conn: Connection, device_id: str, modality: Modality) -> None:
    """Refuse a confirmation by `modality` signed by a device that cannot give one."""
    profile = profile_of(conn, device_id)
    if profile is None:
        raise ConsentError(
            f"{device_id} has no provisioned kind: provision it with --kind", ErrorCode.MODALITY_NOT_SUPPORTED
        )
    if not MODALITY_NEEDS[modality].met_by(profile):
        have = ",".join(sorted(profile.capabilities)) or "none"
        raise ConsentError(f"a {profile.kind} ({have}) cannot confirm by {modality}", ErrorCode.MODALITY_NOT_SUPPORTED)
