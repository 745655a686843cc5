"""`device-sdk provision`: a client's broker credentials and, for a device, its signing key.

`provision("speaker-1")` makes a broker password for the user `speaker-1` (role `device`),
a consent signing key registered with the verifier's `DeviceRegistry` (as `keys create` does),
a credentials file (`<dir>/credentials/speaker-1.json`, mode 600) and, from the users registry,
the Mosquitto password file, ACL file and configuration, with a test CA unless the operator
brings certificates. A running Mosquitto reads the new users and ACL on SIGHUP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.edge_policy import EdgePolicy
from device_sdk.consent.keys import SigningKey
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.checkout.partners import given_partner
from device_sdk.platform.checkout.profiles import DeviceProfile
from device_sdk.platform.checkout.registry import DeviceRegistry
from device_sdk.platform.checkout.step_up import StepUp, check_pin
from device_sdk.platform.checkout.store_url import StoreUrl, parse_store
from device_sdk.protocol.errors import ConfigError, ErrorCode, KeyStoreError
from device_sdk.protocol.fields import Capability, DeviceKind
from device_sdk.protocol.topics import check_id
from device_sdk.state import default_database, default_key_file, write_file

from .broker_config import (
    KEYED_ROLES,
    BrokerDir,
    BrokerSettings,
    BrokerUser,
    Role,
    hash_password,
    new_password,
)
from .tls import DEFAULT_HOSTS, TlsFiles, ensure_test_ca


@dataclass(frozen=True)
class Credentials:
    """What one client connects with: the content of its credentials file."""

    username: str
    password: str = field(repr=False)
    role: Role
    urls: tuple[str, ...]
    """Broker URLs with the user and password in them, TLS first (with `?ca=` when a CA file is known)."""
    ca: str | None = None
    key_file: str | None = None
    kid: str | None = None

    def broker_url(self, *, tls: bool = True) -> BrokerUrl:
        """The TLS URL (or the plain loopback one) as a `BrokerUrl`."""
        for url in self.urls:
            parsed = BrokerUrl.parse(url)
            if parsed.tls == tls:
                return parsed
        raise ConfigError(f"the credentials of {self.username} have no {'TLS' if tls else 'plain'} broker URL")

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "role": self.role.value, "urls": list(self.urls)}

    @classmethod
    def load(cls, path: str | Path) -> Credentials:
        try:
            data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
            return cls(**{**data, "role": Role(data["role"]), "urls": tuple(data["urls"])})
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} holds no credentials: {exc}") from None


@dataclass(frozen=True)
class Provisioned:
    """What `provision` did."""

    credentials: Credentials
    credentials_file: Path
    broker: BrokerDir
    tls: TlsFiles
    test_ca: bool
    rotated: bool
    database: Path | StoreUrl | None = None
    phone: str | None = None
    """The phone the device was paired with (`phone=`), whose sheet confirms what it hands over."""
    profile: DeviceProfile | None = None
    """What the device was provisioned as: its kind and capabilities decide its modalities."""
    pin_set: bool = False
    """Whether a step-up PIN was set (its salted hash is in the verifier's database)."""
    edge_policy_file: Path | None = None
    """The device's own limits, copied beside its credentials (`DeviceClient(edge_policy=...)` loads it)."""

    def as_dict(self) -> dict[str, Any]:
        """Everything but the password (it is in the credentials file)."""
        c = self.credentials
        return {
            "username": c.username,
            "role": c.role.value,
            "rotated": self.rotated,
            "credentials_file": str(self.credentials_file),
            "urls": [str(BrokerUrl.parse(url)) for url in c.urls],
            "ca": c.ca,
            "test_ca": self.test_ca,
            "phone": self.phone,
            **(self.profile.as_dict() if self.profile else {}),
            "pin_set": self.pin_set,
            "edge_policy_file": str(self.edge_policy_file) if self.edge_policy_file else None,
            "key_file": c.key_file,
            "kid": c.kid,
            "database": str(self.database) if self.database else None,
            "conf": str(self.broker.conf_file),
            "passwd": str(self.broker.passwd_file),
            "acl": str(self.broker.acl_file),
        }


def provision(
    name: str,
    role: Role = Role.DEVICE,
    *,
    directory: str | Path | None = None,
    database: str | Path | StoreUrl | None = None,
    key_out: str | Path | None = None,
    rotate: bool = False,
    settings: BrokerSettings | None = None,
    phone: str | None = None,
    kind: DeviceKind | str | None = None,
    capabilities: list[Capability] | list[str] | None = None,
    pin: str | None = None,
    partner: tuple[str, str] | None = None,
    edge_policy: EdgePolicy | None = None,
) -> Provisioned:
    """Make `name` a broker user of `role` and write the broker's files again.

    A device also gets its signing key (`key_out`, default `default_key_file(name)`), registered
    in the `DeviceRegistry` of `database` (default `default_database()`); an existing key file is
    kept and registered, unless `rotate`. A user that exists already is refused (`KeyStoreError`,
    code `key_conflict`) unless `rotate`: then it gets a new password and, a device, a new key (the
    old key verifies mandates issued before for 15 minutes). `settings` replace the stored ones.
    `phone` pairs a device with that phone (provisioned before it): when the device's own modality
    cannot get an answer, it hands the offer to the phone, whose sheet confirms and whose key signs.
    A device's `kind` and `capabilities` (default: as recorded before, else a speaker's) bound the
    modalities the verifier takes from it; `pin` (read from a file by the command, never an
    argument) is its user's step-up PIN, kept as a salted scrypt hash. `partner` is the hardware
    partner and device model the device's orders are credited to (`partners`). `edge_policy` is the
    device's own limits, written beside its credentials as `<name>.edge-policy.json`.
    """
    check_id(name, "user name")
    if phone is not None and role not in KEYED_ROLES:
        raise KeyStoreError(f"only a device is paired with a phone, not a {role}", ErrorCode.NOT_PAIRED)
    if (kind is not None or capabilities is not None or pin is not None or partner or edge_policy) and (
        role not in KEYED_ROLES
    ):
        raise ConfigError(f"a {role} has no kind, capabilities, PIN, partner or edge policy: only a device")
    if pin is not None:
        check_pin(pin)  # before anything changes
    broker = BrokerDir(directory)
    with broker.locked():
        registry = broker.load()
        existing = registry.users.get(name)
        if existing is not None and not rotate:
            raise KeyStoreError(
                f"{name} is provisioned already (as {existing.role}); --rotate gives it a new password"
                + (" and key" if existing.role in KEYED_ROLES else ""),
                ErrorCode.KEY_CONFLICT,
            )
        if existing is not None and existing.role is not role:
            raise KeyStoreError(f"{name} is a {existing.role}, not a {role}: revoke it first", ErrorCode.KEY_CONFLICT)
        if settings is not None:
            registry.settings = settings
        tls, test_ca = _tls_files(broker, registry.settings)
        key_file = kid = db_path = profile = None
        if role in KEYED_ROLES:
            db_path = parse_store(database) if database is not None else default_database()
            key_file = (Path(key_out) if key_out is not None else default_key_file(name)).expanduser().absolute()
            kid = _signing_key(name, key_file, db_path, rotate=rotate)
            with Database(db_path) as db:
                profile = _describe(DeviceRegistry(db), name, kind, capabilities)
                if phone is not None:
                    DeviceRegistry(db).pair(name, check_id(phone, "phone"))
                if pin is not None:
                    StepUp(db, None).set_pin(name, pin)
                if partner is not None:
                    DeviceRegistry(db).attribute(name, *partner)
        password = new_password()
        now = time.time()
        registry.users[name] = BrokerUser(
            name,
            role,
            hash_password(password),
            existing.created_at if existing else now,
            now if existing else None,
        )
        broker.save(registry, tls)
        credentials = Credentials(
            name,
            password,
            role,
            _urls(name, password, registry.settings, tls.ca),
            str(tls.ca),
            str(key_file) if key_file else None,
            kid,
        )
        path = write_file(
            broker.credentials_file(name), (json.dumps(credentials.as_dict(), indent=2) + "\n").encode(), 0o600
        )
        policy_file = None
        if edge_policy is not None:
            policy = edge_policy.model_dump_json(indent=2).encode()
            policy_file = write_file(path.with_name(f"{name}.edge-policy.json"), policy, 0o600)
    return Provisioned(
        credentials,
        path,
        broker,
        tls,
        test_ca,
        existing is not None,
        db_path,
        phone,
        profile,
        pin is not None,
        policy_file,
    )


def _describe(
    registry: DeviceRegistry,
    name: str,
    kind: DeviceKind | str | None,
    capabilities: list[Capability] | list[str] | None,
) -> DeviceProfile:
    """Record what the device is: as given, else as recorded before, else a speaker."""
    before = registry.profile(name)
    if kind is None and capabilities is None and before is not None:
        return before
    profile = DeviceProfile.of(kind or (before.kind if before else DeviceKind.SPEAKER), capabilities)
    registry.describe(name, profile)
    return profile


def read_pin(path: Path) -> str:
    """The PIN in the file at `path` (`-`: standard input), one line of 4 to 12 digits."""
    try:
        text = sys.stdin.readline() if str(path) == "-" else path.expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the PIN file {path}: {exc}") from None
    return text.strip()


@dataclass(frozen=True)
class Revoked:
    name: str
    role: Role | None
    """None: there was no such broker user."""
    keys_revoked: int


def revoke(name: str, *, directory: str | Path | None = None, database: str | Path | StoreUrl | None = None) -> Revoked:
    """Remove a broker user and its credentials file; a device's keys are revoked in the registry.

    After a SIGHUP a running Mosquitto disconnects the user and refuses it from then on."""
    check_id(name, "user name")
    broker = BrokerDir(directory)
    with broker.locked():
        registry = broker.load()
        user = registry.users.pop(name, None)
        if user is not None:
            tls, _ = _tls_files(broker, registry.settings)
            broker.save(registry, tls)
        broker.credentials_file(name).unlink(missing_ok=True)
    revoked = 0
    if user is not None and user.role in KEYED_ROLES:
        with Database(parse_store(database) if database is not None else default_database()) as db:
            revoked = DeviceRegistry(db).revoke(name)
    return Revoked(name, user.role if user else None, revoked)


def _tls_files(broker: BrokerDir, settings: BrokerSettings) -> tuple[TlsFiles, bool]:
    if settings.tls_files is not None:
        return settings.tls_files.check(), False
    hosts = list(DEFAULT_HOSTS) + ([settings.host] if settings.host not in DEFAULT_HOSTS else [])
    return ensure_test_ca(broker.tls_dir, hosts), True


def _urls(name: str, password: str, settings: BrokerSettings, ca: Path) -> tuple[str, ...]:
    auth = f"{quote(name, safe='')}:{quote(password, safe='')}"
    urls = [f"mqtts://{auth}@{settings.host}:{settings.tls_port}?ca={quote(str(ca.resolve()))}"]
    if settings.plain_port is not None:
        urls.append(f"mqtt://{auth}@127.0.0.1:{settings.plain_port}")
    return tuple(urls)


def _signing_key(device_id: str, key_file: Path, database: Path | StoreUrl, *, rotate: bool) -> str:
    """The device's key registered in the verifier's registry: the one in `key_file` (a first
    provisioning that finds one keeps it), or a new one that replaces it (rotation)."""
    with Database(database) as db:
        registry = DeviceRegistry(db)
        if key_file.exists() and not rotate:
            return registry.register(device_id, SigningKey.load(key_file).public)
        key = SigningKey.generate()
        staged = key_file.with_name(f".{key_file.name}.{secrets.token_hex(6)}.new")
        key.save(staged)
        try:
            kid = registry.rotate(device_id, key.public)
            staged.replace(key_file)  # registered: the new key takes the old one's place at once
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return kid


# the command -------------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> StoreUrl | None:
    """`--database` (a path or a URL) with `--database-password-file`, or None."""
    if args.database is None:
        return None
    return parse_store(args.database, getattr(args, "database_password_file", None))


def run_provision(args: argparse.Namespace) -> int:
    """`device-sdk provision`: parse-free handler for the arguments `cli.py` collected."""
    role = Role(args.role)
    broker = BrokerDir(args.dir)
    if args.revoke:
        gone = revoke(args.name, directory=broker.path, database=_store(args))
        if args.json:
            print(json.dumps({"revoked": args.name, "role": gone.role, "keys_revoked": gone.keys_revoked}))
        else:
            what = f"broker user ({gone.role}) removed" if gone.role else "no broker user"
            print(f"{args.name}: {what}; {gone.keys_revoked} signing key(s) revoked")
            _reload_hint(broker)
        return 0 if gone.role else 1
    given = {
        "host": args.host,
        "tls_port": args.tls_port,
        "plain_port": args.plain_port,
        "tls_files": TlsFiles(*(Path(p).expanduser().absolute() for p in args.tls_files)) if args.tls_files else None,
    }
    given = {k: v for k, v in given.items() if v is not None}
    settings = None
    if given:
        with broker.locked():
            settings = dataclasses.replace(broker.load().settings, **given)
    done = provision(
        args.name,
        role,
        directory=broker.path,
        database=_store(args),
        key_out=args.key_out,
        rotate=args.rotate,
        settings=settings,
        phone=args.phone,
        kind=args.kind,
        capabilities=args.capabilities.split(",") if args.capabilities else None,
        pin=read_pin(args.pin_file) if args.pin_file else None,
        partner=given_partner(args.partner, args.model),
        edge_policy=EdgePolicy.load(args.edge_policy) if args.edge_policy else None,  # checked before anything
    )
    if args.json:
        print(json.dumps(done.as_dict()))
        return 0
    c = done.credentials
    print(f"{c.username} ({c.role}): {'new password' if done.rotated else 'broker user created'}; "
          f"credentials in {done.credentials_file} (mode 600)")  # fmt: skip
    if c.kid:
        print(f"signing key {c.kid} in {c.key_file} (mode 600), registered in {done.database}")
    if done.profile:
        caps = ",".join(sorted(done.profile.capabilities)) or "none"
        print(f"a {done.profile.kind} ({caps}): it confirms by {', '.join(done.profile.modalities())}")
    if done.pin_set:
        print("step-up PIN set (kept as a salted scrypt hash)")
    if done.edge_policy_file:
        print(f"its own limits (edge policy) in {done.edge_policy_file}: DeviceClient(edge_policy=...) loads them")
    if done.phone:
        print(f"paired with the phone {done.phone}: its sheet confirms the offers {c.username} hands over")
    print(f"broker files: {broker.passwd_file}, {broker.acl_file}, {broker.conf_file}")
    ca = f"{done.tls.ca} (a TEST CA: bring your own with --tls-files for production)" if done.test_ca else done.tls.ca
    print(f"clients trust the CA {ca}")
    print(f"connect: {', '.join(str(BrokerUrl.parse(url)) for url in c.urls)} as {c.username}")
    print(f"run the broker: mosquitto -c {broker.conf_file}")
    _reload_hint(broker)
    return 0


def _reload_hint(broker: BrokerDir) -> None:
    pid = broker.running_pid()
    if pid is not None:
        print(f"mosquitto runs with this configuration (pid {pid}): kill -HUP {pid} makes it read the users and ACL")
    else:
        print("a mosquitto already running with this configuration reads the users and ACL again on SIGHUP")
