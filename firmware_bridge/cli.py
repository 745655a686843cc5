"""`firmware-bridge run`: one pair of glasses on a BLE link, carried onto the MQTT device protocol, so
the gateway treats them like any other device. `firmware-bridge phone`: a phone's OEM intents.

    firmware-bridge run --ble AA:BB:CC:DD:EE:FF --broker mqtt://127.0.0.1:1883
    firmware-bridge run --name Lens-01 --broker mqtt://127.0.0.1:1883 --asr sphinx
    firmware-bridge run --simulated --broker mqtt://127.0.0.1:1883 --sessions 1 --json

A tap or a nod on a blank lens starts a session (`GlassesDriver.sessions`): a photo, the words (heard
through the glasses' microphone with `--asr sphinx`, else "buy this": one of what the photo shows),
the card on the lens, the wearer's gesture, the order. `--locale zh-CN` makes the glasses a zh-CN
device: they ask "帮我买这个", hear the wearer with Whisper in Chinese (`--asr whisper`), and show
a Chinese card. The device's signing key is read from `--key` (default: the state directory, where
`device-sdk keys create DEVICE_ID` puts it).

`--simulated` runs simulated glasses on a virtual link in this process, driven through bleak as
real ones are, with a simulated wearer who taps the blank lens (saying `--say` into the microphone,
if given) and answers each card with `--tap`.

    firmware-bridge phone --broker mqtt://127.0.0.1:1883 --device-id phone-1 --oem-keys oem-keys.json \
        --listen 127.0.0.1:8787 --sheet-url http://127.0.0.1:8788/sheet

takes signed intents for one phone on the bus and at `POST http://127.0.0.1:8787/v1/intents`, and
puts each order on the phone's system sheet through its local sheet service (`--sheet-url`, see
docs/phone.md); without one, every cart is handed to the phone's app by a deep link.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

from device_sdk.bus.password import broker_options, broker_url
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import SigningKey
from device_sdk.device.client import DeviceClient
from device_sdk.locale import DEFAULT_LOCALE, LOCALES, locale_for
from device_sdk.protocol.errors import ConfigError
from device_sdk.protocol.fields import DeviceKind
from device_sdk.protocol.topics import check_id
from device_sdk.state import default_key_file
from device_sdk.terminal import log_to_stderr, printable
from device_sdk.voice.asr import AsrEngine
from device_sdk.voice.grammar import vocabulary_named
from device_sdk.voice.sphinx import SphinxEngine
from device_sdk.voice.whisper import WhisperEngine

from .glasses import CAPABILITIES, GlassesDriver, GlassesRun
from .intent_http import HttpLimits
from .link import GlassesLink, find_glasses

SIMULATED = "firmware_bridge.simulated"
"""Entry-point group of what `--simulated` runs: glasses on a virtual link and a wearer who uses
them (the simulators package registers `glasses`): the bridge reaches them only through this group."""


class SimulatedGlasses(Protocol):
    """Opens simulated glasses (kept open by `stack`) and returns the link to them; a simulated
    wearer taps the blank lens, says `say` if given, and answers each card with `tap`."""

    async def __call__(
        self, stack: contextlib.AsyncExitStack, *, device_id: str, say: str | None, tap: str, sessions: int,
        scan_timeout: float, locale: str,
    ) -> GlassesLink: ...  # fmt: skip


def simulated_glasses() -> SimulatedGlasses:
    """What `--simulated` runs, from the entry point `glasses` of the group `SIMULATED`."""
    found = [ep for ep in entry_points(group=SIMULATED) if ep.name == "glasses"]
    if not found:
        raise ConfigError("--simulated needs the simulators package: nothing registers glasses in " + SIMULATED)
    opener: SimulatedGlasses = found[0].load()
    return opener


def parser() -> argparse.ArgumentParser:
    """The `firmware-bridge` command line."""
    parser = argparse.ArgumentParser(prog="firmware-bridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="carry one pair of glasses onto the bus")
    where = run.add_mutually_exclusive_group(required=True)
    where.add_argument("--ble", metavar="ADDRESS", help="the glasses' Bluetooth address")
    where.add_argument("--name", help="scan for glasses advertising this name (strongest signal first)")
    where.add_argument("--simulated", action="store_true", help="simulated glasses on a virtual link")
    broker_options(run, "MQTT broker URL, e.g. mqtts://glasses-1@localhost:8883?ca=ca.crt", required=True)
    run.add_argument("--device-id", default="glasses-1", help="the glasses' device id on the bus")
    run.add_argument("--key", type=Path, default=None, help="the device's signing key file")
    run.add_argument(
        "--asr", choices=["none", "sphinx", "whisper"], default="none",
        help="hear the wearer (default: none; --say: the locale's own, sphinx for en-US, whisper for zh-CN)",
    )  # fmt: skip
    run.add_argument(
        "--locale", choices=LOCALES, default=DEFAULT_LOCALE,
        help="the glasses' language (declared in device.info): what they ask, hear and show",
    )  # fmt: skip
    run.add_argument(
        "--vocabulary", default="demo",
        help="the agent's command vocabulary the recogniser listens for (a name in device_sdk.vocabularies; "
        "default: demo, the reference agent's catalog)",
    )  # fmt: skip
    run.add_argument("--sessions", type=int, default=0, help="stop after this many sessions (default: never)")
    run.add_argument("--scan-timeout", type=float, default=10.0, help="seconds to look for the glasses")
    run.add_argument("--say", default=None, help="--simulated: what the wearer says (implies the locale's --asr)")
    run.add_argument("--tap", choices=["confirm", "cancel", "none"], default="confirm", help="--simulated: answer")
    run.add_argument("--json", action="store_true", help="one JSON object per session")
    phone = commands.add_parser("phone", help="take a phone's OEM intents (bus and local endpoint) for the agent")
    broker_options(phone, "MQTT broker URL for the phone, e.g. mqtts://phone-1@localhost:8883", required=True)
    phone.add_argument("--device-id", default="phone-1", help="the phone's device id on the bus")
    phone.add_argument("--oem-keys", type=Path, required=True, help='JSON {"oems": {"<oem id>": ["<public key>"]}}')
    phone.add_argument("--listen", default="127.0.0.1:8787", help="local endpoint HOST:PORT ('off' for none)")
    phone.add_argument("--no-bus", action="store_true", help="take intents at the local endpoint only")
    phone.add_argument("--sheet-url", default=None, help="the phone's sheet service (default: none: deep links)")
    phone.add_argument("--deep-link-base", default="shopagent://cart", help="the app's cart link")
    phone.add_argument(
        "--locale", choices=LOCALES, default=DEFAULT_LOCALE,
        help="the phone's language (declared in device.info); an intent in another is refused (unsupported_locale)",
    )  # fmt: skip
    http = HttpLimits()
    phone.add_argument(
        "--header-timeout",
        type=float,
        default=http.header_timeout,
        help="seconds a client has to send the request's headers (default: %(default)s)",
    )
    phone.add_argument(
        "--body-timeout",
        type=float,
        default=http.body_timeout,
        help="seconds a client has to send the body after them (default: %(default)s)",
    )
    phone.add_argument(
        "--max-body",
        type=int,
        default=http.max_body,
        help="largest body taken, bytes; more is 413 (default: %(default)s)",
    )
    phone.add_argument(
        "--max-connections",
        type=int,
        default=http.max_connections,
        help="connections open at once; the oldest still sending headers makes room, else 503 (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log_to_stderr(args.verbose)
    if args.command == "phone":
        return asyncio.run(_phone(args))
    if args.say is not None and not args.simulated:
        raise ConfigError("--say is for --simulated glasses: a real wearer speaks for themselves")
    return asyncio.run(_run(args))


async def _phone(args: argparse.Namespace) -> int:
    from device_sdk.protocol.fields import Capability

    from .intents import IntentVerifier, OemKeys
    from .phone import HttpSheet, IntentBridge

    device_id = check_id(args.device_id, "device id")
    keys = OemKeys.load(args.oem_keys)
    listen = None
    if args.listen != "off":
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--listen {args.listen!r}: expected HOST:PORT")
        listen = (host, int(port))
    sheet = HttpSheet(args.sheet_url) if args.sheet_url else None
    limits = HttpLimits(args.header_timeout, args.body_timeout, args.max_body, args.max_connections)
    capabilities = [Capability.DISPLAY, Capability.TOUCH, Capability.TEXT]
    async with contextlib.AsyncExitStack() as stack:
        device = await stack.enter_async_context(
            DeviceClient(_broker(args), device_id, kind=DeviceKind.PHONE, capabilities=capabilities, locale=args.locale)
        )
        bridge = await stack.enter_async_context(
            IntentBridge(device, IntentVerifier(keys), sheet, bus=not args.no_bus, listen=listen,
                         deep_link_base=args.deep_link_base, http_limits=limits)
        )  # fmt: skip
        where = [] if args.no_bus else [f"bus {device.topics.oem_intents_for(device_id)}"]
        if bridge.port is not None and listen is not None:
            where.append(f"http://{listen[0]}:{bridge.port}/v1/intents")
        print(f"firmware-bridge: {device_id} takes intents of {len(keys)} OEM key(s) on {', '.join(where)}",
              file=sys.stderr, flush=True)  # fmt: skip
        await asyncio.Event().wait()
    return 0


async def _run(args: argparse.Namespace) -> int:
    device_id = check_id(args.device_id, "device id")
    key_file = args.key or default_key_file(device_id)
    if not key_file.exists():
        raise ConfigError(f"no key file {key_file}: run `device-sdk keys create {device_id}` first")
    key = SigningKey.load(key_file)
    engine: AsrEngine | None = None
    vocabulary = None
    if args.asr != "none" or args.say is not None:
        engine = await asyncio.to_thread(_engine, args.asr, args.locale)
        vocabulary = vocabulary_named(args.vocabulary)
    done = 0
    async with contextlib.AsyncExitStack() as stack:
        link = await stack.enter_async_context(await _link(args, stack))
        device = await stack.enter_async_context(
            DeviceClient(
                _broker(args), device_id, kind=DeviceKind.GLASSES,
                capabilities=CAPABILITIES, firmware=await link.read_firmware(), key=key, locale=args.locale,
            )
        )  # fmt: skip
        driver = GlassesDriver(link, device)
        print(printable(f"firmware-bridge: {link.address} is {device_id} on {device.url}"), file=sys.stderr)
        async for session in driver.sessions(engine=engine, vocabulary=vocabulary):
            _report(session, args.json)
            done += 1
            if done == args.sessions:
                break
    return 0


def _engine(asr: str, locale: str) -> AsrEngine:
    """What hears the wearer: `asr`, or (none) the locale's own: pocketsphinx for a language it has
    a model of (en-US), else Whisper in the locale's language (zh-CN)."""
    data = locale_for(locale)
    if asr == "none":
        asr = "sphinx" if data.voice.hearing == "hybrid" else "whisper"
    if asr == "sphinx":
        if data.voice.hearing != "hybrid":
            raise ConfigError(f"pocketsphinx has no {locale} model: --asr whisper (or none)")
        return SphinxEngine()
    whisper = WhisperEngine(language=data.language)
    whisper.warm()
    return whisper


def _broker(args: argparse.Namespace) -> BrokerUrl:
    """`--broker` with the password from `--broker-password-file` or the environment (never the URL)."""
    url = broker_url(args.broker, args.broker_password_file)
    if url is None:
        raise ConfigError("--broker URL is needed")
    return url


async def _link(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> GlassesLink:
    if args.ble:
        return GlassesLink(args.ble)
    if args.name:
        found = await find_glasses(name=args.name, timeout=args.scan_timeout)
        if not found:
            raise ConfigError(f"no glasses named {args.name!r} heard within {args.scan_timeout} s")
        return GlassesLink(found[0].device, rssi=found[0].rssi)
    return await simulated_glasses()(
        stack, device_id=args.device_id, say=args.say, tap=args.tap, sessions=args.sessions,
        scan_timeout=args.scan_timeout, locale=args.locale,
    )  # fmt: skip


def _report(session: GlassesRun, as_json: bool) -> None:
    outcome = session.result.outcome.value if session.result else (session.error.code.value if session.error else None)
    report = {
        "heard": session.heard,
        "image_ref": session.image_ref,
        "card_digest": session.card.digest if session.card else None,
        "gesture": session.gesture.value if session.gesture else None,
        "decision": session.decision.value if session.decision else None,
        "outcome": outcome,
        "order_id": session.result.order_id if session.result else None,
    }
    if as_json:
        print(json.dumps(report), flush=True)
    else:
        print(
            f"session: {report['gesture'] or '-'} -> {outcome}"
            + (f" ({report['order_id']})" if report["order_id"] else ""),
            flush=True,
        )


def run() -> None:
    from device_sdk.cli import console

    console(main, "firmware-bridge")
