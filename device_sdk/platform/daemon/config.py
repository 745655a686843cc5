"""The gateway service's configuration: a TOML file, then the environment over it.

Secrets never sit in the file or on the command line: the broker's password comes from a file
(`[broker] password_file`, as `--broker-password-file`) or `$DEVICE_SDK_BROKER_PASSWORD`, the
PostgreSQL password from `[database] password_file` or `$DEVICE_SDK_DATABASE_PASSWORD`. A key the
service does not know is refused by name, so a typo does not silently fall back to a default. See
examples/gateway.toml.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from device_sdk.bus.password import broker_url
from device_sdk.bus.url import BrokerUrl
from device_sdk.platform.gateway.admission import Capacity
from device_sdk.platform.gateway.limits import Limits
from device_sdk.protocol.errors import ConfigError

ENVIRONMENT = {
    "DEVICE_SDK_GATEWAY_ID": ("gateway", "id"),
    "DEVICE_SDK_BROKER_URL": ("broker", "url"),
    "DEVICE_SDK_BROKER_PASSWORD_FILE": ("broker", "password_file"),
    "DEVICE_SDK_DATABASE_URL": ("database", "url"),
    "DEVICE_SDK_DATABASE_PASSWORD_FILE": ("database", "password_file"),
    "DEVICE_SDK_HTTP_PORT": ("http", "port"),
    "DEVICE_SDK_LOG_LEVEL": ("log", "level"),
}
"""Environment variables and the setting each one overrides."""

KEYS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "gateway": {"id": str, "drain_seconds": (int, float), "keep_ended": (int, float),
                "confirm_timeout": (int, float), "agent_timeout": (int, float)},
    "broker": {"url": str, "password_file": str},
    "database": {"url": str, "password_file": str, "audience": str, "policy": str},
    "checkout": {"backend": str},
    "agent": {"core": str},
    "http": {"host": str, "port": (int, str)},
    "log": {"level": str, "format": str},
}  # fmt: skip
"""The settings of each table, by type; `[limits]` takes the fields of `gateway.limits.Limits`, `[capacity]`
those of `gateway.admission.Capacity`."""
FIELD_TABLES = ("limits", "capacity")


@dataclass(frozen=True)
class GatewayConfig:
    """Everything `device-sdk gateway` runs with."""

    broker: BrokerUrl
    database: str
    """A SQLite file (or `sqlite:///path`) or a `postgresql://USER@HOST:PORT/DBNAME` URL."""
    database_password_file: Path | None = None
    """The PostgreSQL user's password: the file's first line (else `$DEVICE_SDK_DATABASE_PASSWORD`)."""
    gateway_id: str | None = None
    audience: str = "shop-checkout:demo"
    """The audience devices' mandates name: the checkout this gateway completes for."""
    policy: Path | None = None
    checkout: str = "simulators.checkout:CheckoutStandIn"
    """`module:callable` making the checkout backend from the consent verifier (default: the stand-in merchant)."""
    agent: str | None = None
    """`module:callable` making an agent core to host in this process (default: none, agent workers run apart)."""
    http_host: str = "127.0.0.1"
    http_port: int = 9464
    drain_seconds: float = 30.0
    keep_ended: float = 60.0
    confirm_timeout: float = 120.0
    agent_timeout: float = 15.0
    limits: Limits = field(default_factory=Limits)
    capacity: Capacity = field(default_factory=Capacity)
    log_level: str = "info"
    log_json: bool = True

    @classmethod
    def load(cls, path: Path | None, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """The file at `path` (None: none), with `env` (default: the process's environment) over it."""
        tables: dict[str, Any] = {}
        if path is not None:
            try:
                tables = tomllib.loads(path.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ConfigError(f"cannot read the gateway configuration {path}: {exc.strerror}") from None
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        env = os.environ if env is None else env
        for name, (table, key) in ENVIRONMENT.items():
            if env.get(name):
                tables.setdefault(table, {})[key] = env[name]
        return cls.of(tables, str(path) if path is not None else "the environment")

    @classmethod
    def of(cls, tables: dict[str, Any], where: str) -> GatewayConfig:
        """The configuration in parsed TOML `tables`; `where` names their source in errors."""
        for table, values in tables.items():
            if table not in KEYS and table not in FIELD_TABLES:
                raise ConfigError(f"{where}: no table [{table}] (known: {', '.join([*KEYS, *FIELD_TABLES])})")
            if not isinstance(values, dict):
                raise ConfigError(f"{where}: [{table}] must be a table")
            for key, value in values.items():
                if table not in FIELD_TABLES and key not in KEYS[table]:
                    raise ConfigError(f"{where}: [{table}] has no setting {key!r}")
                if table not in FIELD_TABLES and not isinstance(value, KEYS[table][key]):
                    raise ConfigError(f"{where}: [{table}] {key} has the wrong type ({type(value).__name__})")

        def get(table: str, key: str) -> Any:
            return tables.get(table, {}).get(key)

        url, database = get("broker", "url"), get("database", "url")
        if not url:
            raise ConfigError(f"{where}: no broker ([broker] url or $DEVICE_SDK_BROKER_URL)")
        if not database:
            raise ConfigError(f"{where}: no database ([database] url or $DEVICE_SDK_DATABASE_URL)")
        password_file = get("broker", "password_file")
        broker = broker_url(url, Path(password_file) if password_file else None)
        assert broker is not None
        try:
            limits = Limits(**tables.get("limits", {}))
            capacity = Capacity(**tables.get("capacity", {}))
            port = int(get("http", "port") or 9464)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not 0 <= port < 65536:
            raise ConfigError(f"{where}: [http] port {port} is not a TCP port")
        log_format = get("log", "format") or "json"
        if log_format not in ("json", "text"):
            raise ConfigError(f"{where}: [log] format is json or text, not {log_format!r}")
        gateway = tables.get("gateway", {})
        defaults = {"drain_seconds": 30.0, "keep_ended": 60.0, "confirm_timeout": 120.0, "agent_timeout": 15.0}
        timings = {key: float(gateway.get(key, default)) for key, default in defaults.items()}
        if any(value <= 0 for value in timings.values()):
            raise ConfigError(f"{where}: the [gateway] timings must be above 0")
        policy, db_password = get("database", "policy"), get("database", "password_file")
        return cls(
            broker=broker, database=database, gateway_id=get("gateway", "id"), limits=limits, capacity=capacity,
            database_password_file=Path(db_password) if db_password else None,
            audience=get("database", "audience") or cls.audience, policy=Path(policy) if policy else None,
            checkout=get("checkout", "backend") or cls.checkout, agent=get("agent", "core"),
            http_host=get("http", "host") or cls.http_host, http_port=port,
            log_level=get("log", "level") or "info", log_json=log_format == "json",
            drain_seconds=timings["drain_seconds"], keep_ended=timings["keep_ended"],
            confirm_timeout=timings["confirm_timeout"], agent_timeout=timings["agent_timeout"],
        )  # fmt: skip

    def described(self) -> dict[str, Any]:
        """The settings for the start-up log line (no password)."""
        return {
            "gateway_id": self.gateway_id,
            "broker": str(self.broker),
            "database": _no_password(self.database),
            "checkout": self.checkout,
            "agent": self.agent,
        }


def _no_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if sep and at and ":" in userinfo:
        return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
    return url
