"""`device-sdk`: the SDK's own commands (keys, provisioning, the audit log, discovery, message schemas,
the consent bench) and every command a package registers under `device_sdk.commands` (the demo,
the backend, the simulators, the evaluations and the other benches come from `simulators`)."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from device_sdk.commands import GROUP, Commands
from device_sdk.conformance import command as conformance_command
from device_sdk.discovery.listing import run_discover
from device_sdk.platform import commands as platform_commands
from device_sdk.protocol import asyncapi
from device_sdk.protocol.errors import DeviceSdkError
from device_sdk.protocol.messages import message_schemas
from device_sdk.terminal import log_to_stderr, printable


def parser() -> argparse.ArgumentParser:
    """The whole command line: the SDK's commands, then each registered package's, by entry-point name."""
    root = argparse.ArgumentParser(prog="device-sdk", description=__doc__)
    root.add_argument("-v", "--verbose", action="store_true", help="log what the SDK does")
    commands = Commands(root.add_subparsers(dest="command", required=True), path="command")
    _register(commands)
    platform_commands.register(commands)
    conformance_command.register(commands)
    for plugin in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
        plugin.load()(commands)
    return root


def _register(commands: Commands) -> None:
    discover = commands.add("discover", "devices, gateways and MQTT brokers on the LAN (zeroconf)", run=_discover)
    discover.add_argument("--json", action="store_true", help="print one JSON array (default: a table)")
    discover.add_argument("--timeout", type=float, default=3.0, help="seconds to browse (default 3)")
    discover.add_argument("--interface", action="append", metavar="IP", help="browse on this address only (repeat)")
    schema = commands.add("schema", "write the JSON Schema of every bus message", run=_schema)
    schema.add_argument("--out", type=Path, required=True, help="directory for <type>.schema.json files")
    commands.add("asyncapi", "print the protocol as an AsyncAPI 3.0 document (YAML): docs/asyncapi.yaml", run=_asyncapi)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log_to_stderr(args.verbose)
    code = args.run(args)
    if inspect.iscoroutine(code):
        code = asyncio.run(code)
    return int(code)


def console(main: Callable[[], int], prog: str) -> None:
    """A console entry point: exit with `main`'s code; Ctrl-C ends quietly (130), an SDK error is one
    line on stderr (2)."""
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except DeviceSdkError as exc:
        print(printable(f"{prog}: {exc}"), file=sys.stderr)
        raise SystemExit(2) from None


def run() -> None:
    console(main, "device-sdk")


async def _discover(args: argparse.Namespace) -> int:
    live = sys.stdout.isatty() and not args.json
    return await run_discover(args.timeout, args.interface, as_json=args.json, live=live)


def _asyncapi(args: argparse.Namespace) -> int:
    sys.stdout.write(asyncapi.render())
    return 0


def _schema(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    schemas = message_schemas()
    for name, schema in schemas.items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(schemas)} schemas to {out}")
    return 0


if __name__ == "__main__":
    run()
