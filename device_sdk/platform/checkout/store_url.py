"""Where the platform stores live: a SQLite file (`sqlite:///path`, or a plain path: the embedded
default) or a PostgreSQL database (`postgresql://USER@HOST:PORT/DBNAME`).

The password of a PostgreSQL user never goes on the command line, where every user of the machine
reads it (`ps`): a URL with one is refused; it comes from a file (`--database-password-file`) or
from `$DEVICE_SDK_DATABASE_PASSWORD` (libpq's own `~/.pgpass` and `$PGPASSWORD` work as well).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from device_sdk.bus.password import first_line, read_secret_file
from device_sdk.protocol.errors import ConfigError
from device_sdk.state import state_dir

PASSWORD_ENV = "DEVICE_SDK_DATABASE_PASSWORD"
PASSWORD_FILE_OPTION = "--database-password-file"
SCHEMES = ("postgresql", "postgres")
INLINE_REFUSED = (
    "a password in the database URL can be read by every user of this machine (ps): give the user in the URL "
    f"(postgresql://USER@HOST:PORT/DBNAME) and the password in a file ({PASSWORD_FILE_OPTION} FILE) or in "
    f"${PASSWORD_ENV}"
)


@dataclass(frozen=True)
class StoreUrl:
    """A parsed database location: `path` for SQLite, `dsn` (with any password) for PostgreSQL."""

    path: Path | None = None
    dsn: str | None = None
    password: str | None = None

    @property
    def postgres(self) -> bool:
        return self.dsn is not None

    def beside(self, suffix: str, state: Path | None = None) -> Path:
        """A file that goes with the store (the audit log's key, a stand-in merchant's book): beside a
        SQLite file, `<file><suffix>`; for PostgreSQL in the state directory (`state`, default
        `state_dir()`), under the database's host, port and name: `<state>/stores/HOST-PORT-DB<suffix>`."""
        if self.path is not None:
            return self.path.with_name(self.path.name + suffix)
        parts = urlsplit(str(self.dsn))
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{parts.hostname}-{parts.port or 5432}-{parts.path.strip('/')}")
        return (state or state_dir()) / "stores" / (name + suffix)

    def __str__(self) -> str:
        """The location as it may be shown (never the password)."""
        return str(self.path) if self.path is not None else str(self.dsn)


def parse_store(target: str | Path | StoreUrl, password_file: Path | None = None) -> StoreUrl:
    """The store at `target`: a `StoreUrl`, a path, `sqlite:///path` or `postgresql://...`; the
    PostgreSQL password from `password_file`, else `$DEVICE_SDK_DATABASE_PASSWORD`."""
    if isinstance(target, StoreUrl):
        return target
    if isinstance(target, Path):
        return StoreUrl(path=target)
    text = target.strip()
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme == "sqlite":
        path = text.split("://", 1)[1]
        if not path.startswith("/"):
            raise ConfigError(f"a SQLite URL is sqlite:///PATH (an absolute path), not {text!r}")
        return StoreUrl(path=Path(unquote(path)))
    if scheme in SCHEMES:
        parts = urlsplit(text)
        if parts.password is not None:
            raise ConfigError(INLINE_REFUSED)
        if not parts.hostname or not parts.path.strip("/"):
            raise ConfigError(f"a PostgreSQL URL names a host and a database: postgresql://USER@HOST:PORT/DBNAME, "
                              f"not {text!r}")  # fmt: skip
        password = read_password(password_file) if password_file is not None else os.environ.get(PASSWORD_ENV)
        return StoreUrl(dsn=text, password=password or None)
    if scheme:
        raise ConfigError(f"a database is a file path, sqlite:///PATH or postgresql://..., not a {scheme}: URL")
    if password_file is not None:
        raise ConfigError(f"{PASSWORD_FILE_OPTION} is for a PostgreSQL URL, not a SQLite file")
    return StoreUrl(path=Path(text).expanduser())


def store_argument(text: str) -> str:
    """The `type` of a `--database` option: refuses a URL with a password (argparse exits 2 with
    this message, which does not repeat the URL)."""
    if "://" in text and urlsplit(text).password is not None:
        raise argparse.ArgumentTypeError(INLINE_REFUSED)
    return text


def read_password(path: Path) -> str:
    """The password in `path`: its first line."""
    return first_line(read_secret_file(path, "database password"), path, "database password")
