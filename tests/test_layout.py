"""The layout as docs/architecture.md promises it: rooms, module sizes, the partner API, and commands
that each package registers for itself."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import device_sdk
from device_sdk.cli import parser
from device_sdk.commands import Commands
from device_sdk.protocol.errors import ConfigError
from device_sdk.voice.grammar import Vocabulary, vocabulary_named

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("device_sdk", "firmware_bridge", "simulators")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_500_lines(package: str) -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules(package) if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_the_sdk_is_in_rooms() -> None:
    top = {p.name for p in (ROOT / "device_sdk").glob("*.py")} - {"__init__.py", "__main__.py", "cli.py"}
    assert len(top) <= 6, top
    rooms = [d for d in (ROOT / "device_sdk").iterdir() if (d / "__init__.py").is_file()]
    assert len(rooms) >= 4
    for room in rooms:  # every room says what it holds
        assert ast.get_docstring(ast.parse((room / "__init__.py").read_text())), room


@pytest.mark.parametrize("package", ["device_sdk", "firmware_bridge"])
def test_nothing_below_imports_what_is_above(package: str) -> None:
    """Not even inside a function: a higher package reaches a lower one only through entry points."""
    above = {"device_sdk": ("firmware_bridge", "simulators"), "firmware_bridge": ("simulators",)}[package]
    found = []
    for path in modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in above]
    assert found == []


def test_import_linter_contracts_hold() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "0 broken" in done.stdout


def test_the_partner_api_is_one_import() -> None:
    assert set(device_sdk.__all__) >= {"DeviceClient", "VoiceAssistant", "SigningKey", "MqttBus", "Decision"}
    for name in device_sdk.__all__:
        assert getattr(device_sdk, name).__name__ == name


def test_every_command_is_registered_by_the_package_that_owns_it() -> None:
    root = parser()
    sub = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    assert {"demo", "serve", "simulate", "eval", "bench", "keys", "audit", "provision", "discover", "schema"} <= set(
        sub.choices
    )
    bench = next(a for a in sub.choices["bench"]._actions if isinstance(a, argparse._SubParsersAction))
    assert set(bench.choices) == {"bus", "consent", "frames", "asr", "ble", "flood", "fleet"}
    args = root.parse_args(["bench", "frames", "--bytes", "1000"])
    assert args.run.__module__ == "firmware_bridge.commands"
    assert root.parse_args(["demo"]).run.__module__ == "simulators.commands"
    assert root.parse_args(["keys", "list"]).run.__module__ == "device_sdk.platform.commands"


def test_two_plugins_cannot_take_one_command() -> None:
    commands = Commands(argparse.ArgumentParser().add_subparsers(dest="command"), path="command")
    bench = commands.group("bench", "benchmarks")
    assert commands.group("bench", "another help") is bench  # a group is shared, made by the first
    bench.add("frames", "one", run=lambda args: 0)
    with pytest.raises(ConfigError, match="frames"):
        bench.add("frames", "two", run=lambda args: 0)
    with pytest.raises(ConfigError, match="bench"):
        commands.add("bench", "a command where a group is", run=lambda args: 0)


def test_vocabularies_come_from_entry_points() -> None:
    demo = vocabulary_named("demo")
    assert isinstance(demo, Vocabulary)
    assert any(name == "double a batteries" or "batter" in name for name, _unit in demo.products)
    with pytest.raises(ConfigError, match=r"no vocabulary named 'nope' \(installed: .*demo"):
        vocabulary_named("nope")


def test_python_dash_m_runs_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "device_sdk", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "simulate" in done.stdout and "provision" in done.stdout
