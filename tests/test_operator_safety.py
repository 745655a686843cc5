"""Issue 18, findings 7, 8 and 10: what a device sends reaches an operator's terminal as text only;
the demo never touches the state `serve` keeps; broker passwords stay off the command line, and the
commands the docs show are the commands the command line takes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import firmware_bridge.cli
from device_sdk import cli as device_cli
from device_sdk.bus.mosquitto import MosquittoServer, free_port
from device_sdk.bus.password import PASSWORD_ENV, broker_url, read_password
from device_sdk.consent.lens import render_card
from device_sdk.platform.checkout.audit import AuditLog
from device_sdk.platform.checkout.database import Database
from device_sdk.platform.provisioning.broker_config import BrokerDir, BrokerSettings, Role
from device_sdk.platform.provisioning.provision import provision
from device_sdk.platform.timeline import Step
from device_sdk.protocol.errors import BusError, ConfigError, ErrorCode, ProtocolError
from device_sdk.state import default_database, demo_database
from device_sdk.terminal import TerminalFormatter, printable
from tests.conftest import mosquitto_or_skip

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "buy milk\x1b[2J\x1b]0;pwned\x07"
"""A request text that clears the operator's screen and retitles the window, if a terminal gets it raw."""
BIDI = "yes\u202eon\u202c"
"""A reply that reads "yes no" reordered: a right-to-left override."""
RAW = (b"\x1b", b"\x07", "\u202e".encode())


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every command here keeps its files in a state directory of the test's own."""
    monkeypatch.setenv("DEVICE_SDK_STATE", str(tmp_path / "state"))
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    return tmp_path / "state"


def cli(*args: str, program: str = "device_sdk.cli", timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    """The real command line in a process of its own; its output as bytes, as a terminal gets it."""
    command = [sys.executable, "-m", program, *args]
    return subprocess.run(command, capture_output=True, timeout=timeout, cwd=ROOT)


# finding 7: terminal-safe output ------------------------------------------------------------


async def write_hostile_log(path: Path) -> None:
    """An audit log as the gateway writes it, for a session whose device sent escape sequences."""
    async with Database(path) as db:
        audit = await asyncio.to_thread(AuditLog.open, db)
        ids = {"device_id": "speaker-1", "session_id": "ses_evil"}
        await audit.record("proposal", checkout_id="chk_1", request=HOSTILE, total_minor=1, currency="USD", **ids)
        await audit.record("confirmation", checkout_id="chk_1", decision="confirm", heard=BIDI, **ids)


async def test_finding_7_audit_show_escapes_what_a_device_sent_and_json_keeps_it_raw(tmp_path: Path) -> None:
    log = tmp_path / "shop.db"
    await write_hostile_log(log)

    shown = cli("audit", "show", str(log), "--session", "ses_evil")
    assert shown.returncode == 0, shown.stderr
    assert [raw for raw in RAW if raw in shown.stdout] == []
    text = shown.stdout.decode()
    assert "request=buy milk\\x1b[2J\\x1b]0;pwned\\x07" in text  # visible, as escapes
    assert "heard=yes\\u202eon\\u202c" in text
    assert len(text.splitlines()) == 2  # one line a record

    as_json = cli("audit", "show", str(log), "--session", "ses_evil", "--json")
    assert as_json.returncode == 0, as_json.stderr
    records = json.loads(as_json.stdout)
    assert [records[0]["request"], records[1]["heard"]] == [HOSTILE, BIDI]  # the evidence, unchanged
    assert cli("audit", "verify", str(log)).returncode == 0


def test_finding_7_the_demo_prints_what_the_user_said_as_text_and_json_keeps_it() -> None:
    done = cli("demo", "--say", HOSTILE)
    assert done.returncode in (0, 1), done.stderr
    assert [raw for raw in RAW if raw in done.stdout + done.stderr] == []
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in done.stdout.decode()

    as_json = cli("demo", "--say", HOSTILE, "--json")
    assert json.loads(as_json.stdout)["say"] == HOSTILE


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x07", "\x08", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\x9d",  # C0, DEL, C1 (CSI, OSC)
     "\u061c", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # bidi marks and overrides
     "\u2066", "\u2067", "\u2068", "\u2069", "\u2028", "\u2029", "\ud800"],  # isolates, separators, a surrogate
)  # fmt: skip
def test_finding_7_printable_escapes_every_character_a_terminal_acts_on(char: str) -> None:
    shown = printable(f"a{char}b")
    assert shown.isprintable() and shown.startswith("a\\") and shown.endswith("b")
    assert shown[1:-1] == (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
    shown.encode("utf-8")  # a lone surrogate no longer breaks the output


def test_finding_7_printable_keeps_ordinary_text_and_lines_when_asked() -> None:
    for text in ("Confirm 2 x AA batteries | $9.98", "确认：两包五号电池 | 38.30 元", "👩‍👩‍👧 café\\x1b"):
        assert printable(text) == text
    assert printable("one\ntwo\x1b", newlines=True) == "one\ntwo\\x1b"
    assert printable("one\ntwo") == "one\\x0atwo"


def test_finding_7_a_timeline_step_is_one_printable_line() -> None:
    step = Step(12.5, "shop/v1/device/x/up", "x\x1b[31m -> gateway", "error", f"internal: {HOSTILE}\u202e")
    line = step.line()
    assert line.isprintable() and "\x1b" not in line
    assert "x\\x1b[31m -> gateway" in line and "pwned\\x07\\u202e" in line
    assert step.as_dict()["summary"] == f"internal: {HOSTILE}\u202e"  # JSON keeps it


def test_finding_7_human_logs_escape_a_devices_text_and_cannot_forge_a_line() -> None:
    formatter = TerminalFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord("gw", logging.INFO, __file__, 1, "asks %s", (f"{HOSTILE}\nERROR forged: line",), None)
    shown = formatter.format(record)
    assert "\n" not in shown and "\x1b" not in shown and "\x07" not in shown
    assert shown.startswith("INFO gw: asks buy milk\\x1b[2J") and "\\x0aERROR forged" in shown
    try:
        raise ValueError(f"bad {HOSTILE}")
    except ValueError:
        record = logging.LogRecord("gw", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    shown = formatter.format(record)
    assert "\x1b" not in shown and "Traceback" in shown and "\n" in shown  # a traceback keeps its lines


def test_finding_7_a_lens_card_with_control_characters_is_refused() -> None:
    card = "Confirm order\n2 x AA batteries | $9.98\n  sold by Shop\nTotal | $9.98\nTap to confirm"
    render_card(card)  # the card as it should be is drawn
    for hidden in ("\x1b[2J", "\u202e", "\r", "\x85"):
        with pytest.raises(ProtocolError) as refused:
            render_card(card.replace("AA batteries", f"AA{hidden} batteries"))
        assert refused.value.code is ErrorCode.DISPLAY_MISMATCH
        assert "\\x" in refused.value.text or "\\u" in refused.value.text  # named, escaped


# finding 8: the demo never touches real state ----------------------------------------------


def fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_finding_8_the_demo_leaves_the_real_key_and_audit_log_alone(state: Path) -> None:
    created = cli("keys", "create", "speaker-1")
    assert created.returncode == 0, created.stderr
    real = default_database()
    async with Database(real) as db:  # the real log has a real session in it
        audit = await asyncio.to_thread(AuditLog.open, db)
        await audit.record("proposal", device_id="speaker-1", session_id="ses_real", request="two AA")
    keys_before = json.loads(cli("keys", "list", "--json").stdout)
    log_before = json.loads(cli("audit", "verify", "--json").stdout)
    files = await asyncio.to_thread(lambda: {p: fingerprint(p) for p in state.rglob("*") if p.is_file()})
    assert [k["status"] for k in keys_before] == ["active"] and log_before["records"] == 1

    demo = cli("demo", "--json")
    assert demo.returncode == 0, demo.stderr
    assert {path: fingerprint(path) for path in files} == files  # not a byte of the real state changed
    report = json.loads(demo.stdout)
    assert report["outcome"] == "ordered" and report["audit"] == str(demo_database())
    assert demo_database().parent == state / "demo"

    assert json.loads(cli("keys", "list", "--json").stdout) == keys_before  # speaker-1 keeps its key
    assert json.loads(cli("audit", "verify", "--json").stdout) == log_before  # no demo order in it
    demo_log = json.loads(cli("audit", "verify", "--json", str(demo_database())).stdout)
    assert demo_log["ok"] and demo_log["records"] > 0  # the demo's orders are in its own log


# finding 10: secrets off the command line, and docs the command line takes ------------------


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every runnable command of `parser`, as the words that name it."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield path
    for group in groups:
        for name, sub in group.choices.items():
            yield from subcommands(sub, (*path, name))


def subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        group = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = group.choices[name]
    return parser


PROGRAMS = {"device-sdk": device_cli.parser, "firmware-bridge": firmware_bridge.cli.parser}


def broker_commands() -> list[tuple[str, tuple[str, ...], str]]:
    """(program, command, option) for every option of every command that takes a broker URL."""
    found = []
    for program, make in PROGRAMS.items():
        root = make()
        for path in subcommands(root):
            for action in subparser(root, path)._actions:
                found += [(program, path, o) for o in action.option_strings if o in ("--broker", "--mosquitto")]
    return found


def test_finding_10_every_command_that_takes_a_broker_takes_its_password_from_a_file() -> None:
    found = broker_commands()
    assert {(p, " ".join(c)) for p, c, _ in found} >= {
        ("device-sdk", "demo"), ("device-sdk", "serve"), ("device-sdk", "simulate glasses"),
        ("device-sdk", "simulate phone"), ("device-sdk", "simulate devices"), ("device-sdk", "bench bus"),
        ("firmware-bridge", "run"), ("firmware-bridge", "phone"),
    }  # fmt: skip
    for program, path, option in found:
        parser = subparser(PROGRAMS[program](), path)
        assert "--broker-password-file" in parser._option_string_actions, (program, path)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as refused:
            PROGRAMS[program]().parse_args([*path, option, "mqtts://speaker-1:s3cret@broker.lan:8883", "--help"])
        assert refused.value.code == 2, (program, path)
        assert "s3cret" not in err.getvalue() and "--broker-password-file" in err.getvalue()


@pytest.mark.parametrize(
    "argv",
    [["device_sdk.cli", "demo", "--broker", "mqtt://u:s3cret@127.0.0.1:9"],
     ["device_sdk.cli", "serve", "--broker", "u:s3cret@127.0.0.1:9"],
     ["firmware_bridge", "phone", "--broker", "mqtt://phone-1:s3cret@127.0.0.1:9", "--oem-keys", "k.json"]],
)  # fmt: skip
def test_finding_10_a_password_in_the_url_is_refused_with_a_clear_error(argv: list[str]) -> None:
    done = cli(*argv[1:], program=argv[0], timeout=60)
    assert done.returncode == 2
    assert b"s3cret" not in done.stdout + done.stderr
    assert b"ps" in done.stderr and b"--broker-password-file" in done.stderr and PASSWORD_ENV.encode() in done.stderr


def password_of(text: str, password_file: Path | None = None) -> str | None:
    url = broker_url(text, password_file)
    assert url is not None
    return url.password


def test_finding_10_the_password_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    url = broker_url("mqtts://speaker-1@broker.lan:8883?ca=/etc/ca.crt", secret)
    assert url is not None and (url.username, url.password, url.ca) == ("speaker-1", "s3cret", "/etc/ca.crt")
    assert url.argument() == "mqtts://speaker-1@broker.lan:8883?ca=/etc/ca.crt"  # what a child process is given
    credentials = tmp_path / "speaker-1.json"
    credentials.write_text(json.dumps({"username": "speaker-1", "password": "from-provision"}))
    assert read_password(credentials) == "from-provision"
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert password_of("mqtt://speaker-1@h:1883") == "from-env"
    assert password_of("mqtt://h:1883") is None  # no user: no password
    assert password_of("mqtt://speaker-1@h", secret) == "s3cret"  # the file first
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        read_password(secret)
    assert "chmod 600" in caplog.text and "s3cret" not in caplog.text
    for bad, message in [(tmp_path / "none", "cannot read"), (tmp_path / "empty", "empty")]:
        if message == "empty":
            bad.write_text("\n")
        with pytest.raises(ConfigError, match=message):
            broker_url("mqtt://speaker-1@h", bad)
    with pytest.raises(ConfigError, match="needs a user"):
        broker_url("mqtt://h", secret)
    with pytest.raises(ConfigError, match="ps") as inline:
        broker_url("mqtt://speaker-1:s3cret@h")
    assert "s3cret" not in str(inline.value)


def test_finding_10_a_bad_broker_url_is_named_without_its_password() -> None:
    from device_sdk.bus.url import BrokerUrl

    for bad in ("mqtt://u:s3cret@host:99x", "mqtt://u:s3cret@host?ca=/x", "ftp://u:s3cret@host"):
        with pytest.raises(BusError) as caught:
            BrokerUrl.parse(bad)
        assert "s3cret" not in str(caught.value) and "u:***@host" in str(caught.value)


@pytest.fixture
async def with_users(tmp_path: Path) -> AsyncIterator[tuple[MosquittoServer, BrokerDir, str]]:
    """A Mosquitto running the configuration `provision` writes, with the device user phone-1."""
    mosquitto_or_skip()
    settings = BrokerSettings(tls_port=free_port(), plain_port=free_port(), bind="127.0.0.1")
    broker = BrokerDir(tmp_path / "broker")
    done = provision("phone-1", Role.DEVICE, directory=broker.path, database=tmp_path / "shop.db", settings=settings)
    async with MosquittoServer(config=broker.conf_file, port=settings.plain_port, tls_port=settings.tls_port) as server:
        yield server, broker, done.credentials.password


def arguments_of(pid: int) -> tuple[str, bytes]:
    """What every user of the machine sees of a process's arguments: `ps`, and /proc/PID/cmdline."""
    ps = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True, check=False)
    try:
        return ps.stdout, Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it has ended
        return ps.stdout, b""


@pytest.mark.parametrize("source", ["password file", "credentials file", "environment", "wrong password"])
async def test_finding_10_a_bridge_connects_with_a_password_no_ps_shows(
    with_users: tuple[MosquittoServer, BrokerDir, str], tmp_path: Path, source: str
) -> None:
    server, broker, password = with_users
    oem_keys = tmp_path / "oem-keys.json"
    oem_keys.write_text('{"oems": {}}')
    url = f"mqtt://phone-1@127.0.0.1:{server.port}"
    env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
    given: list[str] = []
    if source == "environment":
        env[PASSWORD_ENV] = password
    elif source == "credentials file":
        given = ["--broker-password-file", str(broker.credentials_file("phone-1"))]
    else:
        (tmp_path / "pw").write_text(password if source == "password file" else "not-" + password)
        (tmp_path / "pw").chmod(0o600)
        given = ["--broker-password-file", str(tmp_path / "pw")]
    bridge = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "firmware_bridge", "phone", "--broker", url, *given, "--oem-keys", str(oem_keys),
        "--listen", "off", env=env, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert bridge.stderr is not None
        said = (await asyncio.wait_for(bridge.stderr.readline(), 120)).decode()  # a guard, not a measurement
        ps, cmdline = await asyncio.to_thread(arguments_of, bridge.pid)
        if source == "wrong password":
            assert await asyncio.wait_for(bridge.wait(), 120) == 2
            assert "refused user 'phone-1'" in said and password not in said
        else:
            assert "phone-1 takes intents" in said, said  # connected: Mosquitto took the password
            assert "phone-1@127.0.0.1" in ps and password not in ps
            assert password.encode() not in cmdline
    finally:
        if bridge.returncode is None:
            bridge.terminate()
        await bridge.wait()


# the docs and the command line agree ---------------------------------------------------------

SAMPLES = {
    "TEXT": "buy milk", "URL": "mqtt://127.0.0.1:1883", "PATH": "x.db", "TOML": "policy.toml", "DIR": "out",
    "FILE": "file.json", "N": "3", "S": "1.5", "C": "4", "P": "20", "R": "2", "W": "0.001", "IP": "127.0.0.1",
    "HEX": "00ff", "PUB": "@key.pem", "ID": "speaker-1", "DEVICE_ID": "speaker-1", "PHONE_ID": "phone-1",
    "ADDRESS": "AA:BB:CC:DD:EE:FF", "NAME": "Lens-01", "SKU": "bat-aa-4", "HOST:PORT": "127.0.0.1:8787",
    "CASES.jsonl": "cases.jsonl", "CASES": "cases.jsonl", "VOICE": "joe", "CA": "ca.crt", "CERT": "c.crt",
    "KEY": "k.key", "SPEAKER": "speaker-1", "PHONE": "phone-1", "MTU": "247", "ARGS": "", "KIND": "speaker",
    "HH:MM": "23:00", "DEVICE": "speaker-1", "G": "2", "NODES": "3", "DATABASE": "x.db", "M": "demo-speaker",
    "DATE": "2026-12-01",
}  # fmt: skip
"""What stands for each placeholder of the docs' synopses when they are parsed."""
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?|[A-Z]+:[A-Z]+")
ALT = "|"
Node = tuple[str, object]


def lex(text: str) -> list[str]:
    """The words of a command line or synopsis, with `[`, `]`, `(`, `)` and ` | ` apart; `a|b` stays a word."""
    out: list[str] = []
    for token in shlex.split(text.replace("\\|", "|"), comments=True):
        if token in (">", ">>"):  # the shell's redirection: the command ends before it
            break
        if token in ("&", "..."):
            continue
        if token == "|":
            out.append(ALT)
            continue
        while token[:1] in ("[", "("):
            out.append(token[0])
            token = token[1:]
        tail: list[str] = []
        while token.endswith(("...", "]", ")")):
            if token.endswith("..."):
                token = token[:-3]
            else:
                tail.insert(0, token[-1])
                token = token[:-1]
        out += [token] if token else []
        out += tail
    return out


def parse_synopsis(tokens: list[str]) -> list[list[Node]]:
    """Alternatives (` | `) of sequences of words, `[optional]` and `(grouped)` parts."""

    def alternatives(at: int, close: str | None) -> tuple[list[list[Node]], int]:
        alts: list[list[Node]] = [[]]
        while at < len(tokens):
            token = tokens[at]
            if token == close:
                return alts, at + 1
            if token == ALT:
                alts.append([])
                at += 1
            elif token in ("[", "("):
                inner, at = alternatives(at + 1, "]" if token == "[" else ")")
                alts[-1].append(("group", inner))
            else:
                alts[-1].append(("word", token.split("|")))
                at += 1
        assert close is None, f"unclosed {close} in {tokens}"
        return alts, at

    return alternatives(0, None)[0]


def width(alts: list[list[Node]]) -> int:
    """How many variants show every alternative once."""
    most = len(alts)
    for seq in alts:
        for kind, value in seq:
            most = max(most, len(value) if kind == "word" else width(value))  # type: ignore[arg-type]
    return most


def expand(alts: list[list[Node]], k: int) -> list[str]:
    """Variant `k`: the `k`th of each choice (wrapping round), every optional part in."""
    words: list[str] = []
    for kind, value in alts[k % len(alts)]:
        if kind == "group":
            words += expand(value, k)  # type: ignore[arg-type]
        else:
            word = value[k % len(value)]  # type: ignore[index]
            if PLACEHOLDER.fullmatch(word):
                assert word in SAMPLES, f"no sample for the placeholder {word}: add one to SAMPLES"
                word = SAMPLES[word]
            words += [word] if word else []
    return words


def shown_commands(path: Path) -> list[tuple[str, bool]]:
    """Every `device-sdk ...` and `firmware-bridge ...` the file shows, and whether it is shown whole: a
    line of a code block or a command table is; a mention in a sentence may leave out required options."""
    text = path.read_text(encoding="utf-8")
    prefix = r"(?:\$ )?(?:\.venv/bin/)?((?:device-sdk|firmware-bridge) [^`]*)"
    found = []
    for line in re.findall(r"^\|.*\|$", text, re.M):  # tables: the command column
        found += [(re.sub(r"\s+", " ", m), True) for m in re.findall(rf"^\| `{prefix}`", line)]
    found += [(re.sub(r"\s+", " ", m), False) for m in re.findall(rf"(?<!`)`{prefix}`", text)]
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M):
        joined = block.replace("\\\n", " ")
        found += [(m.group(1), True) for line in joined.splitlines() if (m := re.match(prefix, line.strip()))]
    return found


def parse_shown(command: str, whole: bool = True) -> str | None:
    """None if every variant of `command` parses with the real parser, else what the parser said (for
    a command not shown `whole`, all but missing required arguments)."""
    program, _, rest = command.partition(" ")
    synopsis = parse_synopsis(lex(rest))
    for k in range(width(synopsis)):
        argv = expand(synopsis, k)
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                PARSERS[program].parse_args(argv)
        except SystemExit:
            said = err.getvalue().strip().splitlines()[-1]
            if "arguments are required" in said and not whole:
                continue  # a command mentioned in a sentence (`device-sdk keys create`), not a command line
            return f"{program} {shlex.join(argv)}: {said}"
    return None


PARSERS = {name: make() for name, make in PROGRAMS.items()}


def test_finding_10_the_readme_commands_parse() -> None:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("examples/*.py"))]
    shown = {(path.name, *command) for path in files for command in shown_commands(path)}
    table = [c for name, c, whole in shown if name == "README.md" and whole]
    assert len(table) >= 15 and any("provision" in c for c in table)  # the command table is read, whole
    failures = [f"{name}: {said}" for name, command, whole in sorted(shown) if (said := parse_shown(command, whole))]
    assert failures == []


def test_finding_10_the_synopsis_reader_tries_every_choice() -> None:
    synopsis = parse_synopsis(lex("provision DEVICE_ID [--role device\\|gateway\\|bridge] [--json]"))
    variants = [expand(synopsis, k) for k in range(width(synopsis))]
    assert [v[3] for v in variants] == ["device", "gateway", "bridge"]
    said = parse_shown("device-sdk provision DEVICE_ID [--role device\\|gateway\\|bridge] [--json]")
    assert said is not None and "invalid choice: 'bridge'" in said
    assert parse_shown("firmware-bridge run (--ble ADDRESS | --name NAME | --simulated) --broker URL") is None
