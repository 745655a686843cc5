"""Who may read and write which topics on the broker, and the Mosquitto files that enforce it.

`ROLES` is the one table of rights. The users registry (`users.json`, mode 600, in the broker
directory) keeps each broker user's role and password hash; the Mosquitto password file, ACL file
and `mosquitto.conf` are rendered from it, every user in an explicit `user` block (no `%u`
patterns). A user's name is its id: a device id, a gateway id, an OEM id, or any name for the
agent, oem and monitor roles. See docs/security.md.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import pwd
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.topics import DEFAULT_ROOT, VERSION_SEGMENT, check_id
from device_sdk.state import state_dir, write_file

from .tls import TlsFiles


class Role(StrEnum):
    DEVICE = "device"
    GATEWAY = "gateway"
    AGENT = "agent"
    OEM = "oem"
    MONITOR = "monitor"


class Access(StrEnum):
    READ = "read"
    """Subscribe to the topic and receive what is published there."""
    WRITE = "write"
    """Publish there (a last will too)."""
    READWRITE = "readwrite"


@dataclass(frozen=True)
class Rule:
    """One right: `access` to `topic`, a filter under `<root>/v1/` in which `{id}` is the user's own id."""

    access: Access
    topic: str

    def filter(self, base: str, user_id: str) -> str:
        return f"{base}/{self.topic.format(id=user_id)}"


R, W, RW = Access.READ, Access.WRITE, Access.READWRITE

ROLES: dict[Role, tuple[Rule, ...]] = {
    Role.DEVICE: (
        Rule(W, "device/{id}/status"),
        Rule(W, "device/{id}/info"),
        Rule(W, "device/{id}/up"),
        Rule(W, "device/{id}/step_up"),  # the PIN: for gateways only, never a monitor
        Rule(W, "device/{id}/audio"),
        Rule(W, "device/{id}/image"),
        Rule(W, "device/{id}/suggestion_result"),
        Rule(R, "device/{id}/down"),
        Rule(R, "device/{id}/suggestion"),
        Rule(R, "device/{id}/controller"),
        Rule(R, "oem/+/{id}/intent"),  # a phone's intent bridge takes its own intents...
        Rule(W, "oem/+/{id}/reply"),  # ...and answers them
    ),
    Role.GATEWAY: (
        Rule(R, "gateway/+/status"),
        Rule(W, "gateway/{id}/status"),
        Rule(RW, "device/+/controller"),
        Rule(R, "device/+/status"),
        Rule(R, "device/+/info"),
        Rule(R, "device/+/up"),
        Rule(R, "device/+/step_up"),
        Rule(R, "device/+/audio"),
        Rule(R, "device/+/suggestion_result"),
        Rule(W, "device/+/down"),
        Rule(W, "device/+/suggestion"),
        Rule(W, "agent/request"),
        Rule(R, "agent/reply/{id}"),
        Rule(W, "errors"),
    ),
    Role.AGENT: (
        Rule(R, "agent/request"),
        Rule(W, "agent/reply/+"),
        Rule(R, "device/+/image"),
        Rule(RW, "probe/#"),
        Rule(W, "errors"),
    ),
    Role.OEM: (
        Rule(W, "oem/{id}/+/intent"),
        Rule(R, "oem/{id}/+/reply"),
    ),
    Role.MONITOR: (  # the messages, not the microphones' audio, the cameras' images, the OEM intents or PINs
        Rule(R, "device/+/status"),
        Rule(R, "device/+/info"),
        Rule(R, "device/+/controller"),
        Rule(R, "device/+/up"),
        Rule(R, "device/+/down"),
        Rule(R, "gateway/+/status"),
        Rule(R, "agent/#"),
        Rule(R, "oem/+/+/reply"),  # an intent carries the user's camera picture: only its answer
        Rule(R, "errors"),
    ),
}
"""What each role may read and write: everything else is refused (subscriptions) or dropped (publishes)."""

ROLE_PURPOSE: dict[Role, str] = {
    Role.DEVICE: "one speaker, pair of glasses or phone (a phone's intent bridge too); its name is its device id",
    Role.GATEWAY: "a gateway; its name is its gateway id",
    Role.AGENT: "an agent worker (shared subscription `$share/<group>/.../agent/request`)",
    Role.OEM: "a phone OEM's assistant; its name is its OEM id",
    Role.MONITOR: "the timeline tap: reads the messages (no audio, no images, no step-up PINs, no OEM intents: "
    "only their answers), writes nothing",
}

KEYED_ROLES = frozenset({Role.DEVICE})
"""Roles whose provisioning also makes a consent signing key registered with the verifier."""


def roles_table(root: str = DEFAULT_ROOT) -> str:
    """`ROLES` as the Markdown table of docs/security.md."""
    base = f"{root}/{VERSION_SEGMENT}"
    lines = ["| role | who | reads | writes |", "|---|---|---|---|"]
    for role, rules in ROLES.items():
        reads = [f"`{r.filter(base, '<id>')}`" for r in rules if r.access in (R, RW)]
        writes = [f"`{r.filter(base, '<id>')}`" for r in rules if r.access in (W, RW)]
        lines.append(f"| `{role}` | {ROLE_PURPOSE[role]} | {', '.join(reads) or '-'} | {', '.join(writes) or '-'} |")
    return "\n".join(lines)


# passwords ---------------------------------------------------------------------------------

PBKDF2_ITERATIONS = 101
"""`mosquitto_passwd`'s default in Mosquitto 2.0; the passwords are 192-bit random, not guessable."""


def new_password() -> str:
    """32 URL-safe characters (192 random bits)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2's `$7$` hash: PBKDF2-HMAC-SHA512, `$7$<iterations>$<salt b64>$<hash b64>`."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(expected, base64.b64decode(digest))
    except ValueError:
        return False


# the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker listens and what clients are told to connect to."""

    host: str = "localhost"
    """The name clients connect to; the test CA's server certificate names it (and localhost, 127.0.0.1)."""
    tls_port: int = 8883
    bind: str | None = None
    """Address of the TLS listener; None: every interface."""
    plain_port: int | None = None
    """A listener without TLS on 127.0.0.1 (same users and ACL) for clients on the broker's host."""
    root: str = DEFAULT_ROOT
    tls_files: TlsFiles | None = None
    """The operator's own CA and server certificate; None: the test CA in `<dir>/tls`."""

    def __post_init__(self) -> None:
        for port in (self.tls_port, self.plain_port):
            if port is not None and not 0 < port < 65536:
                raise ConfigError(f"port {port} is not 1-65535")
        for text in (self.host, self.bind or "", self.root):
            if any(c.isspace() for c in text):
                raise ConfigError(f"{text!r} contains white space")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tls_files"] = {k: str(v) for k, v in asdict(self.tls_files).items()} if self.tls_files else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrokerSettings:
        data = dict(data)
        files = data.pop("tls_files", None)
        tls = TlsFiles(Path(files["ca"]), Path(files["cert"]), Path(files["key"])) if files else None
        return cls(**data, tls_files=tls)


@dataclass(frozen=True)
class BrokerUser:
    name: str
    role: Role
    password_hash: str = field(repr=False)
    created_at: float
    rotated_at: float | None = None

    def acl(self, base: str) -> list[str]:
        """This user's block of the ACL file."""
        rules = [f"topic {rule.access} {rule.filter(base, self.name)}" for rule in ROLES[self.role]]
        return [f"# {self.name}: {self.role}", f"user {self.name}", *rules]


@dataclass
class Registry:
    """The contents of `users.json`."""

    settings: BrokerSettings = field(default_factory=BrokerSettings)
    users: dict[str, BrokerUser] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"{self.settings.root}/{VERSION_SEGMENT}"

    def to_json(self) -> str:
        users = {
            u.name: {"role": u.role.value, "password_hash": u.password_hash, "created_at": u.created_at,
                     "rotated_at": u.rotated_at}
            for u in sorted(self.users.values(), key=lambda u: u.name)
        }  # fmt: skip
        return json.dumps({"version": 1, "settings": self.settings.as_dict(), "users": users}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "users.json") -> Registry:
        try:
            data = json.loads(text)
            if data.get("version") != 1:
                raise ConfigError(f"{where}: unknown version {data.get('version')!r}")
            users = {
                name: BrokerUser(check_id(name, "user name"), Role(u["role"]), u["password_hash"], u["created_at"],
                                 u.get("rotated_at"))
                for name, u in data["users"].items()
            }  # fmt: skip
            return cls(BrokerSettings.from_dict(data["settings"]), users)
        except ConfigError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{where} is not a users registry: {type(exc).__name__}: {exc}") from None


# rendering ---------------------------------------------------------------------------------


def render_passwd(users: Iterable[BrokerUser]) -> str:
    """Mosquitto's password file: `name:$7$...` a line."""
    return "".join(f"{u.name}:{u.password_hash}\n" for u in sorted(users, key=lambda u: u.name))


def render_acl(registry: Registry) -> str:
    """Mosquitto's ACL file: one `user` block per user, nothing for anyone else."""
    lines = ["# Generated by device-sdk provision: edits are overwritten. No rule applies to all users."]
    for user in sorted(registry.users.values(), key=lambda u: u.name):
        lines += ["", *user.acl(registry.base)]
    return "\n".join(lines) + "\n"


def render_conf(broker: BrokerDir, settings: BrokerSettings, tls: TlsFiles) -> str:
    """`mosquitto.conf`: authenticated users only, the ACL, a TLS listener, and maybe a loopback one."""
    lines = [
        f"# Generated by device-sdk provision from {broker.users_file}: edits are overwritten.",
        "per_listener_settings false",
        "allow_anonymous false",
        "# without it small messages wait for Nagle's timer: request → reply p95 ~48 ms here, ~3 ms with it",
        "set_tcp_nodelay true",
        f"password_file {_conf_path(broker.passwd_file)}",
        f"acl_file {_conf_path(broker.acl_file)}",
        "# started as root, Mosquitto becomes this user: the owner of these files (mode 600)",
        f"user {pwd.getpwuid(os.geteuid()).pw_name}",
        f"pid_file {_conf_path(broker.pid_file)}",
        "",
        f"listener {settings.tls_port}" + (f" {settings.bind}" if settings.bind else ""),
        f"cafile {_conf_path(tls.ca)}",
        f"certfile {_conf_path(tls.cert)}",
        f"keyfile {_conf_path(tls.key)}",
        "tls_version tlsv1.2",
    ]
    if settings.plain_port is not None:
        lines += ["", "# without TLS, for clients on this host only", f"listener {settings.plain_port} 127.0.0.1"]
    return "\n".join(lines) + "\n"


def _conf_path(path: Path) -> str:
    text = str(path.resolve())
    if "\n" in text or "\r" in text:
        raise ConfigError(f"a line break in the path {text!r}")
    return text


# the directory -----------------------------------------------------------------------------


def default_broker_dir() -> Path:
    return state_dir() / "broker"


class BrokerDir:
    """The broker's files in one directory: `users.json`, `passwd`, `acl`, `mosquitto.conf`,
    `tls/` (the test CA) and `credentials/<name>.json` (what each client connects with)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = (Path(path) if path is not None else default_broker_dir()).expanduser().absolute()

    @property
    def users_file(self) -> Path:
        return self.path / "users.json"

    @property
    def passwd_file(self) -> Path:
        return self.path / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.path / "acl"

    @property
    def conf_file(self) -> Path:
        return self.path / "mosquitto.conf"

    @property
    def pid_file(self) -> Path:
        return self.path / "mosquitto.pid"

    @property
    def tls_dir(self) -> Path:
        return self.path / "tls"

    @property
    def credentials_dir(self) -> Path:
        return self.path / "credentials"

    def credentials_file(self, name: str) -> Path:
        return self.credentials_dir / f"{check_id(name, 'user name')}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock: one provisioning at a time reads, changes and writes the files."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self) -> Registry:
        """The registry, or an empty one when there is none yet."""
        try:
            text = self.users_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Registry()
        except OSError as exc:
            raise ConfigError(f"cannot read {self.users_file}: {exc.strerror}") from None
        return Registry.from_json(text, str(self.users_file))

    def save(self, registry: Registry, tls: TlsFiles) -> None:
        """Write the registry, then the password file, the ACL file and `mosquitto.conf` from it."""
        write_file(self.users_file, registry.to_json().encode(), 0o600)
        write_file(self.passwd_file, render_passwd(registry.users.values()).encode(), 0o600)
        write_file(self.acl_file, render_acl(registry).encode(), 0o600)
        write_file(self.conf_file, render_conf(self, registry.settings, tls).encode(), 0o644)

    def running_pid(self) -> int | None:
        """The pid in `mosquitto.pid` (written by `mosquitto -d`) if that process is a running mosquitto."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"mosquitto" in cmdline else None
