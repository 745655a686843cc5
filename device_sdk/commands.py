"""How a package adds commands to `device-sdk`: the plugin interface of the command line.

A package registers a function under the entry-point group `device_sdk.commands` (as pytest loads
its plugins); `device-sdk` calls it with a `Commands` before it parses the arguments:

    [project.entry-points."device_sdk.commands"]
    simulators = "simulators.commands:register"

    def register(commands: Commands) -> None:
        bench = commands.group("bench", "benchmarks")
        asr = bench.add("asr", "the recogniser alone", run=run_bench_asr)
        asr.add_argument("--json", action="store_true")

`run` takes the parsed arguments and returns the exit code, or a coroutine that does (the command
line runs it with `asyncio.run`). The SDK's own commands are registered the same way, in
`device_sdk.cli`; the SDK never imports a package that registers commands.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Coroutine
from typing import Any

from device_sdk.protocol.errors import ConfigError

GROUP = "device_sdk.commands"
"""The entry-point group `device-sdk` loads its commands from."""

Run = Callable[[argparse.Namespace], "int | Coroutine[Any, Any, int]"]
"""A command's body: the parsed arguments in, the exit code out (directly or by a coroutine)."""


class Commands:
    """The subcommands of one level of the command line (`device-sdk`, or a group such as `bench`)."""

    def __init__(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser], *, path: str) -> None:
        self._subparsers = subparsers
        self._path = path
        self._groups: dict[str, Commands] = {}
        self._names: set[str] = set()

    def add(self, name: str, help: str, *, run: Run, description: str | None = None) -> argparse.ArgumentParser:
        """A command `name` that runs `run`; add its options to the parser returned."""
        self._claim(name)
        parser = self._subparsers.add_parser(name, help=help, description=description or help)
        parser.set_defaults(run=run)
        return parser

    def group(self, name: str, help: str) -> Commands:
        """The group of commands `name` (`device-sdk NAME COMMAND`), made by the first to ask for it."""
        if name not in self._groups:
            self._claim(name)
            parser = self._subparsers.add_parser(name, help=help, description=help)
            dest = f"{self._path}_{name}".replace("-", "_")
            self._groups[name] = Commands(parser.add_subparsers(dest=dest, required=True), path=dest)
        return self._groups[name]

    def _claim(self, name: str) -> None:
        if name in self._names:
            raise ConfigError(f"two plugins register the command {name!r}")
        self._names.add(name)


def print_report(report: dict[str, Any], as_json: bool) -> int:
    """A benchmark's figures: one JSON object, or a line per figure (and per item of a list)."""
    if as_json:
        print(json.dumps(report))
        return 0
    for key, value in report.items():
        for item in value if isinstance(value, list) else [value]:
            print(f"{key}: {item}")
    return 0
