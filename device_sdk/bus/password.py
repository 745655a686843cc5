"""Broker passwords kept off the command line: every user of a machine can read a process's arguments
(`ps`, `/proc/PID/cmdline`), so a command takes the broker's URL with the user only
(`mqtts://speaker-1@host:8883?ca=ca.crt`) and the password from a file (`--broker-password-file`,
a credentials file of `device-sdk provision` too) or from `$DEVICE_SDK_BROKER_PASSWORD`. A URL
with a password in it is refused, and no message repeats it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

from device_sdk.protocol.errors import ConfigError

from .url import BrokerUrl

PASSWORD_ENV = "DEVICE_SDK_BROKER_PASSWORD"
"""The environment variable a broker password may come from (a file given by option comes first)."""
PASSWORD_FILE_OPTION = "--broker-password-file"
INLINE_REFUSED = (
    "a password in the broker URL can be read by every user of this machine (ps): give the user in the URL "
    f"(mqtt://USER@HOST:PORT) and the password in a file ({PASSWORD_FILE_OPTION} FILE) or in ${PASSWORD_ENV}"
)
log = logging.getLogger(__name__)


def has_password(url: str) -> bool:
    """Whether the broker URL `url` carries a password (`user:password@`), however malformed the rest."""
    netloc = urlsplit(url if "://" in url else f"mqtt://{url}").netloc
    userinfo, at, _ = netloc.rpartition("@")
    return bool(at) and ":" in userinfo


def broker_argument(text: str) -> str:
    """The `type` of a broker URL option: refuses a URL with a password (argparse then exits 2 with
    this message, which does not repeat the URL)."""
    if has_password(text):
        raise argparse.ArgumentTypeError(INLINE_REFUSED)
    return text


def broker_options(
    parser: argparse.ArgumentParser, help: str, *, flag: str = "--broker", required: bool = False
) -> None:
    """A broker URL option (`flag`) and `--broker-password-file`; `broker_url` reads them back."""
    parser.add_argument(flag, type=broker_argument, required=required, default=None, metavar="URL", help=help)
    parser.add_argument(
        PASSWORD_FILE_OPTION, type=Path, default=None, metavar="FILE", dest="broker_password_file",
        help=f"the password of the URL's user: the first line of FILE, or a credentials file of `device-sdk "
        f"provision` (default: ${PASSWORD_ENV}; never in the URL, where ps shows it)",
    )  # fmt: skip


def broker_url(text: str | None, password_file: Path | None = None) -> BrokerUrl | None:
    """The broker at `text` (None without one), with its user's password from `password_file`, else
    from `$DEVICE_SDK_BROKER_PASSWORD` (used only when the URL names a user)."""
    if text is None:
        if password_file is not None:
            raise ConfigError(f"{PASSWORD_FILE_OPTION} is the password of a broker URL: give the URL too")
        return None
    if has_password(text):
        raise ConfigError(INLINE_REFUSED)
    url = BrokerUrl.parse(text)
    if password_file is not None:
        if url.username is None:
            raise ConfigError(f"{PASSWORD_FILE_OPTION}: a password needs a user in the URL (mqtt://USER@{url.host})")
        return dataclasses.replace(url, password=read_password(password_file))
    password = os.environ.get(PASSWORD_ENV)
    if password and url.username is not None:
        return dataclasses.replace(url, password=password)
    return url


def read_password(path: Path) -> str:
    """The password in `path`: its first line, or the `password` of a credentials file (JSON)."""
    text = read_secret_file(path, "broker password")
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        password = data.get("password") if isinstance(data, dict) else None
        if not isinstance(password, str) or not password:
            raise ConfigError(f"{path} is JSON but no credentials file: it has no password")
        return password
    return first_line(text, path, "broker password")


def read_secret_file(path: Path, what: str) -> str:
    """The text of the secret file `path` (a `what` file), warning when other users may read it."""
    try:
        text = path.expanduser().read_text(encoding="utf-8")
        mode = path.expanduser().stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} file {path} is not UTF-8 text") from None
    if mode & 0o077:
        log.warning("the %s file %s can be read by other users: chmod 600 it", what, path)
    return text


def first_line(text: str, path: Path, what: str) -> str:
    """The secret on the first line of a `what` file's `text`, refused when empty."""
    secret = text.split("\n", 1)[0].removesuffix("\r")
    if not secret:
        raise ConfigError(f"the {what} file {path} is empty: the {what.split()[-1]} is its first line")
    return secret
