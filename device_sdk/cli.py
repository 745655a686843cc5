"""`device-sdk`: the demo, the backend, device keys, the audit log, message schemas and benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import DeviceSdkError
from .messages import message_schemas
from .state import default_database, default_key_file


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="device-sdk", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the SDK does")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="a spoken request to a confirmed order, end to end")
    demo.add_argument("--say", default=None, help="what the user says (default: a two-item order)")
    demo.add_argument(
        "--reply", action="append", default=None,
        help="the user's answer to the read-back; repeat for an answer to the re-prompt (default: confirm)",
    )  # fmt: skip
    demo.add_argument("--broker", default=None, help="mqtt://host:port (default: an embedded broker)")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of the timeline")
    demo.add_argument(
        "--voice", action="store_true",
        help="speak the request and replies (espeak-ng) and let the speaker hear them (pocketsphinx)",
    )  # fmt: skip
    _shop_options(demo)

    serve = commands.add_parser(
        "serve", help="run the backend (broker, gateway, reference agent, checkout) for devices"
    )
    serve.add_argument(
        "--broker", default=None,
        help="mqtt://host:port to use, or auto: the first _mqtt._tcp broker zeroconf finds (default: embedded)",
    )  # fmt: skip
    serve.add_argument("--port", type=int, default=1883, help="port of the embedded broker (default 1883)")
    serve.add_argument("--host", default="127.0.0.1", help="address of the embedded broker (default 127.0.0.1)")
    serve.add_argument("--advertise", action="store_true", help="advertise the gateway with zeroconf")
    serve.add_argument("--interface", action="append", metavar="IP", help="zeroconf on this address only (repeat)")
    _shop_options(serve)

    discover = commands.add_parser("discover", help="devices, gateways and MQTT brokers on the LAN (zeroconf)")
    discover.add_argument("--json", action="store_true", help="print one JSON array (default: a table)")
    discover.add_argument("--timeout", type=float, default=3.0, help="seconds to browse (default 3)")
    discover.add_argument("--interface", action="append", metavar="IP", help="browse on this address only (repeat)")

    keys = commands.add_parser("keys", help="device signing keys and the registry the verifier trusts")
    key_commands = keys.add_subparsers(dest="keys", required=True)
    create = key_commands.add_parser(
        "create", help="make a device's key file and register it; an old key keeps verifying mandates issued before "
        "for 15 minutes (after a compromise, revoke first)",
    )  # fmt: skip
    create.add_argument("device_id")
    create.add_argument("--out", type=Path, default=None, help="key file to write (default: the state directory)")
    revoke = key_commands.add_parser("revoke", help="revoke every key of a device")
    revoke.add_argument("device_id")
    listing = key_commands.add_parser("list", help="registered keys")
    listing.add_argument("--json", action="store_true")
    for sub in (create, revoke, listing):
        _shop_options(sub, policy=False)

    provision = commands.add_parser(
        "provision", help="broker credentials (and, for a device, its signing key) for one client; "
        "writes the Mosquitto password file, ACL and configuration (docs/security.md)",
    )  # fmt: skip
    provision.add_argument("name", metavar="DEVICE_ID", help="the client's id: its broker user name")
    provision.add_argument("--role", choices=["device", "gateway", "agent", "oem", "monitor"],
                           default="device", help="what it may read and write (default: device)")  # fmt: skip
    provision.add_argument("--dir", type=Path, default=None, help="broker directory (default: <state>/broker)")
    provision.add_argument("--database", "--db", dest="database", type=Path, default=None,
                           help=f"the verifier's SQLite file (default: {default_database()})")  # fmt: skip
    provision.add_argument("--key-out", type=Path, default=None, help="a device's key file (default: state dir)")
    provision.add_argument("--rotate", action="store_true", help="new password (and key) for a provisioned one")
    provision.add_argument("--revoke", action="store_true", help="remove the user; revoke a device's keys")
    provision.add_argument("--host", default=None, help="name clients connect to (kept; default localhost)")
    provision.add_argument("--tls-port", type=int, default=None, help="TLS listener port (kept; default 8883)")
    provision.add_argument("--plain-port", type=int, default=None, help="also a loopback listener without TLS")
    provision.add_argument("--tls-files", nargs=3, metavar=("CA", "CERT", "KEY"), default=None,
                           help="your own CA and server certificate instead of the test CA")  # fmt: skip
    provision.add_argument("--json", action="store_true", help="one JSON object (no password in it)")

    audit = commands.add_parser("audit", help="check or read the audit log")
    audit_commands = audit.add_subparsers(dest="audit", required=True)
    verify = audit_commands.add_parser("verify", help="exit 0 if the log is intact, else name the first bad record")
    verify.add_argument("path", nargs="?", type=Path, default=None, help=f"(default: {default_database()})")
    verify.add_argument("--key", default=None, help="pin the checkpoint key: base64url, JWK or PEM, or @FILE")
    verify.add_argument("--head", default=None, help="a checkpoint hash (hex) kept elsewhere that must still be there")
    verify.add_argument("--json", action="store_true")
    show = audit_commands.add_parser("show", help="the trail of one session")
    show.add_argument("path", nargs="?", type=Path, default=None, help=f"(default: {default_database()})")
    show.add_argument("--session", required=True, help="session id")
    show.add_argument("--json", action="store_true")

    evaluate = commands.add_parser("eval", help="evaluations")
    eval_kinds = evaluate.add_subparsers(dest="eval", required=True)
    voice = eval_kinds.add_parser("voice", help="spoken cases through the whole voice pipeline, scored")
    voice.add_argument("cases", type=Path, help="JSON Lines cases (the format of tests/data/voice-public.jsonl)")
    voice.add_argument("--engine", choices=("sphinx", "vosk"), default="sphinx")
    voice.add_argument("--model", default=None, help="model directory (vosk: else $DEVICE_SDK_VOSK_MODEL)")
    voice.add_argument("--realtime", action="store_true", help="audio at real-time pace (latency figures)")
    voice.add_argument("--limit", type=int, default=None, help="only the first N cases")
    voice.add_argument("--json", action="store_true", help="print one JSON object (default: a summary)")

    schema = commands.add_parser("schema", help="write the JSON Schema of every bus message")
    schema.add_argument("--out", type=Path, required=True, help="directory for <type>.schema.json files")

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    bus = bench_kinds.add_parser("bus", help="agent round trips through the embedded broker and Mosquitto")
    bus.add_argument("-n", type=int, default=5000, help="round trips per measurement")
    bus.add_argument("--concurrency", type=int, default=32, help="requests in flight for the throughput run")
    bus.add_argument("--mosquitto", default=None, help="mqtt://host:port of a running Mosquitto (default: start one)")
    bus.add_argument("--json", action="store_true")
    consent = bench_kinds.add_parser("consent", help="mandates verified and completed; audit log verification")
    consent.add_argument("-n", type=int, default=5000, help="checkouts to sign, verify and complete")
    consent.add_argument("--threads", type=int, default=2, help="threads that verify and submit (default 2)")
    consent.add_argument("--devices", type=int, default=100, help="devices the checkouts are spread over")
    consent.add_argument("--clients", type=int, default=64, help="concurrent callers of complete() (default 64)")
    consent.add_argument("--audit-records", default="100000,1000000", help="audit log sizes to verify")
    consent.add_argument("--dir", default=None, help="where to put the temporary databases")
    consent.add_argument("--json", action="store_true")

    frames = bench_kinds.add_parser("frames", help="the BLE frame codec alone: frames per message and MB/s")
    frames.add_argument("--bytes", type=int, default=102_400, help="message size (default 100 KB)")
    frames.add_argument("--att-payload", type=int, default=244, help="ATT MTU minus 3 (default 244: MTU 247)")
    frames.add_argument("--repeats", type=int, default=50, help="runs; the best counts (default 50)")
    frames.add_argument("--json", action="store_true")

    ble = bench_kinds.add_parser("ble", help="a 100 KB photo from the simulated glasses over the virtual BLE link")
    ble.add_argument("--repeats", type=int, default=5, help="photos sent; the fastest counts (default 5)")
    ble.add_argument("--mtu", type=int, default=247, help="the ATT MTU asked for (default 247)")
    ble.add_argument("--json", action="store_true")

    simulate = commands.add_parser("simulate", help="simulated devices, end to end, with no hardware")
    simulate_kinds = simulate.add_subparsers(dest="device", required=True)
    glasses = simulate_kinds.add_parser(
        "glasses", help="look, ask, see the card on the lens, tap: simulated glasses over a virtual BLE link"
    )
    glasses.add_argument("--say", default="buy two of these", help="what the wearer asks for")
    glasses.add_argument("--tap", choices=["confirm", "cancel", "none"], default="confirm", help="the wearer's answer")
    glasses.add_argument("--png", type=Path, default=None, help="save the lens (640x400) as PNG here")
    glasses.add_argument("--sku", default="bat-aa-4", help="the product the wearer looks at (catalog SKU)")
    glasses.add_argument("--voice", action="store_true", help="speak --say into the glasses' microphone (espeak-ng)")
    glasses.add_argument("--broker", default=None, help="MQTT broker URL (default: an embedded one)")
    glasses.add_argument("--json", action="store_true")
    phone = simulate_kinds.add_parser(
        "phone", help="a phone assistant's signed intent to an order confirmed on the phone's system sheet"
    )
    phone.add_argument("--say", default="buy two packs of AA batteries", help="what the user asks the assistant")
    phone.add_argument(
        "--sheet", choices=["confirm", "cancel", "none", "unavailable"], default="confirm",
        help="the user's tap on the sheet; unavailable: no sheet can be shown (the cart goes to the app)",
    )  # fmt: skip
    phone.add_argument("--via", choices=["bus", "http"], default="bus", help="how the intent reaches the bridge")
    phone.add_argument("--photo", default=None, metavar="SKU", help="the intent carries a photo of this product")
    phone.add_argument("--broker", default=None, help="MQTT broker URL (default: an embedded one)")
    phone.add_argument("--json", action="store_true")
    devices = simulate_kinds.add_parser("devices", help="speakers and glasses on the bus, advertised with zeroconf")
    devices.add_argument("--count", type=int, default=2, help="how many (default 2: a speaker and a pair of glasses)")
    devices.add_argument("--broker", default=None, help="MQTT broker URL (default: an embedded one)")
    devices.add_argument("--interface", action="append", metavar="IP", help="advertise on this address only (repeat)")
    devices.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    devices.add_argument("--prefix", default="sim", help="device ids are PREFIX-KIND-N (default sim)")

    asr = bench_kinds.add_parser("asr", help="the recogniser alone: commands, replies and non-answers, synthesised")
    asr.add_argument("cases", type=Path, nargs="*", help="case files whose commands are decoded (none: replies only)")
    asr.add_argument("--noise-floor", type=float, default=None, help="SphinxEngine.noise_floor (default 20)")
    asr.add_argument("--reply-word-penalty", type=float, default=None, help="the reply grammar's wip (1e-3)")
    asr.add_argument("--reply-silence-prob", type=float, default=None, help="the reply grammar's silprob (0.005)")
    asr.add_argument("--json", action="store_true")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "demo":
        return asyncio.run(_demo(args))
    if args.command == "schema":
        return _schema(args.out)
    if args.command == "serve":
        return asyncio.run(_serve(args))
    if args.command == "discover":
        from .discovery import run_discover

        live = sys.stdout.isatty() and not args.json
        return asyncio.run(run_discover(args.timeout, args.interface, as_json=args.json, live=live))
    if args.command == "keys":
        return _keys(args)
    if args.command == "provision":
        from .provision import run_provision

        return run_provision(args)
    if args.command == "audit":
        return _audit(args)
    if args.command == "eval":
        return asyncio.run(_eval_voice(args))
    if args.command == "simulate" and args.device == "devices":
        from simulators.advertised import run_advertised_devices

        return asyncio.run(
            run_advertised_devices(args.count, broker=args.broker, interfaces=args.interface, seconds=args.seconds,
                                   prefix=args.prefix)
        )  # fmt: skip
    if args.command == "simulate":
        return asyncio.run(_simulate_phone(args) if args.device == "phone" else _simulate_glasses(args))
    if args.bench == "ble":
        from simulators.ble_bench import run_bench_ble

        return _print_report(asyncio.run(run_bench_ble(args.repeats, args.mtu)), args.json)
    if args.bench == "asr":
        return _bench_asr(args)
    if args.bench == "frames":
        from firmware_bridge.bench import run_bench_frames

        return _print_report(run_bench_frames(args.bytes, args.att_payload, args.repeats), args.json)
    if args.bench == "consent":
        from .bench_consent import run_bench_consent

        return run_bench_consent(args)
    from .bench import run_bench_bus

    return asyncio.run(run_bench_bus(args))


def _shop_options(command: argparse.ArgumentParser, *, policy: bool = True) -> None:
    """Where the checkout keeps its state (`demo`, `serve`, `keys`), and its risk policy."""
    command.add_argument(
        "--audit", "--db", dest="database", type=Path, default=None,
        help=f"SQLite file of the audit log, device keys and verifier store (default: {default_database()})",
    )  # fmt: skip
    if policy:
        command.add_argument(
            "--policy", type=Path, default=None, help="risk policy TOML file (default: built-in defaults)"
        )


def console(main: Callable[[], int], prog: str) -> None:
    """A console entry point: exit with `main`'s code; Ctrl-C ends quietly (130), an SDK error is one
    line on stderr (2)."""
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except DeviceSdkError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run() -> None:
    console(main, "device-sdk")


async def _demo(args: argparse.Namespace) -> int:
    from simulators.scenario import DEFAULT_REPLY, DEFAULT_SAY, run_demo

    from .policy import PolicyBook
    from .tts import espeak_available

    say = args.say or DEFAULT_SAY
    replies = args.reply if args.reply is not None else [DEFAULT_REPLY]
    quiet = args.json
    if args.voice and not espeak_available():
        print(
            "device-sdk: espeak-ng is not installed (apt-get install espeak-ng): the demo runs on text", file=sys.stderr
        )
        args.voice = False
    if not quiet:
        how = "spoken with espeak-ng, heard by the speaker's recogniser" if args.voice else "typed"
        print(f'user says: "{say}" ({how})')
    try:
        result = await run_demo(
            say,
            replies,
            broker=args.broker,
            on_step=None if quiet else lambda step: print(step.line()),
            present=None if quiet else lambda text: print(f"  speaker says: {text}"),
            audit=args.database or default_database(),
            policy=PolicyBook.load(args.policy),
            voice=args.voice,
        )
    except DeviceSdkError as exc:
        if quiet:
            print(json.dumps({"outcome": None, "order": None, "error": {"code": exc.code, "text": exc.text}}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if quiet:
        print(json.dumps(result.as_dict()))
    else:
        if result.run.heard_command is not None:
            print(f'speaker heard: "{result.run.heard_command}"; replies heard: {result.run.heard}')
        order = result.run.result
        error = f" ({result.run.error})" if result.run.error else ""
        print(f"outcome: {result.outcome}{error}" + (f", order {order.order_id}" if order and order.order_id else ""))
        if order is not None and order.reason:
            print(f"reason: {order.reason}")
        if result.verification is not None:
            print(f"mandate {result.verification.mandate_id} verified: signed by {result.verification.key_id}")
        print(f"broker: {result.broker}; orders placed: {result.orders_placed}")
        if result.run.offer is not None:
            session = result.run.offer.session_id
            print(f"audit log: {result.audit} (device-sdk audit show --session {session} {result.audit})")
    return 0 if result.ordered else 1


async def _eval_voice(args: argparse.Namespace) -> int:
    from simulators.voice_eval import CaseResult, report_json, run_eval

    def progress(result: CaseResult) -> None:
        mark = "ok  " if result.success else "MISS"
        print(f"{mark} {result.case.id}: heard {result.run.command!r} -> {result.outcome}", file=sys.stderr)

    report = await run_eval(
        args.cases,
        engine=args.engine,
        model=args.model,
        realtime=args.realtime,
        limit=args.limit,
        progress=None if args.json else progress,
    )
    if args.json:
        print(report_json(report))
    else:
        summary = report.as_dict()
        summary.pop("results")
        for key, value in summary.items():
            print(f"{key}: {value}")
    return 0


def _bench_asr(args: argparse.Namespace) -> int:
    from simulators.asr_bench import run_bench_asr

    report = run_bench_asr(
        args.cases,
        noise_floor=args.noise_floor,
        reply_word_penalty=args.reply_word_penalty,
        reply_silence_prob=args.reply_silence_prob,
    )
    return _print_report(report, args.json)


async def _simulate_glasses(args: argparse.Namespace) -> int:
    from simulators.glasses_demo import run_glasses

    demo = await run_glasses(args.say, tap=args.tap, png=args.png, voice=args.voice, broker=args.broker, sku=args.sku)
    if args.json:
        print(json.dumps(demo.as_dict()))
    else:
        for step in demo.steps:
            print(step.line())
        if demo.run.card is not None:
            print("lens:", *demo.run.card.text.split("\n"), sep="\n  ")
        report = demo.as_dict()
        print(
            f"gesture: {report['gesture']}; outcome: {report['outcome']}"
            + (f"; lens saved to {demo.png}" if demo.png else "")
        )
    run = demo.run
    return 0 if run.result is not None and (run.result.outcome.value == "ordered") == (args.tap == "confirm") else 1


async def _simulate_phone(args: argparse.Namespace) -> int:
    from simulators.phone_demo import run_phone

    demo = await run_phone(args.say, tap=args.sheet, via=args.via, photo=args.photo, broker=args.broker)
    result = demo.result
    if args.json:
        print(json.dumps(demo.as_dict()))
    else:
        for step in demo.steps:
            print(step.line())
        if demo.sheet is not None:
            print("sheet:", *demo.sheet.split("\n"), sep="\n  ")
        print(f"outcome: {result.outcome or result.code}" + (f", order {result.order_id}" if result.order_id else ""))
        if result.deep_link:
            print(f"handed to the app: {result.deep_link}")
    ordered = result.outcome is not None and result.outcome.value == "ordered"
    return 0 if ordered == (args.sheet == "confirm") else 1


def _print_report(report: dict[str, Any], as_json: bool) -> int:
    """A benchmark's figures: one JSON object, or a line per figure (and per item of a list)."""
    if as_json:
        print(json.dumps(report))
        return 0
    for key, value in report.items():
        for item in value if isinstance(value, list) else [value]:
            print(f"{key}: {item}")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    import contextlib

    from simulators.scenario import ShopBackend

    from .embedded_broker import EmbeddedBroker
    from .mqtt import BrokerUrl
    from .policy import PolicyBook

    async with contextlib.AsyncExitStack() as stack:
        if args.broker == "auto":
            from .discovery import find_broker

            url, shared = await find_broker(5.0, args.interface), None
        elif args.broker:
            url, shared = BrokerUrl.parse(args.broker), None
        else:
            broker = EmbeddedBroker(args.host, args.port)
            url, shared = (await stack.enter_async_context(broker)).url, False
        database, policy = args.database or default_database(), PolicyBook.load(args.policy)
        backend = await stack.enter_async_context(ShopBackend(url, shared=shared, database=database, policy=policy))
        print(f"serving devices on {url} as gateway {backend.gateway.gateway_id}; Ctrl-C stops", flush=True)
        print(f"audit log and verifier store: {database}", flush=True)
        if args.advertise:
            from .discovery import GatewayAdvertiser, GatewayInfo

            gateway = GatewayInfo(backend.gateway.gateway_id, url)
            advert = await stack.enter_async_context(GatewayAdvertiser(gateway, interfaces=args.interface))
            print(f"advertised as {advert.name} on {', '.join(advert.addresses)}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    return 0


def _keys(args: argparse.Namespace) -> int:
    from .database import Database
    from .keys import DeviceRegistry, SigningKey
    from .topics import check_id

    with Database(args.database or default_database()) as db:
        registry = DeviceRegistry(db)
        if args.keys == "create":
            device_id = check_id(args.device_id, "device id")
            out = args.out or default_key_file(device_id)
            key = SigningKey.generate()
            key.save(out)
            try:
                kid = registry.rotate(device_id, key.public)
            except BaseException:
                out.unlink()  # not registered: leave no key file behind
                raise
            print(f"{args.device_id}: key {kid} written to {out} (mode 600) and registered in {db.path}")
        elif args.keys == "revoke":
            count = registry.revoke(args.device_id)
            print(f"{args.device_id}: {count} key(s) revoked")
            return 0 if count else 1
        else:
            records = registry.records()
            rows = [{"device_id": r.device_id, "kid": r.kid, "status": r.status.value, "added_at": r.added_at,
                     "retired_at": r.retired_at} for r in records]  # fmt: skip
            if args.json:
                print(json.dumps(rows))
            for row in [] if args.json else rows:
                print(f"{row['device_id']:<24} {row['kid']}  {row['status']}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from .audit import describe, trail, verify_log
    from .errors import KeyStoreError
    from .keys import PublicKey

    path = args.path or default_database()
    if args.audit == "show":
        records = trail(path, args.session)
        if args.json:
            print(json.dumps(records, ensure_ascii=False))
        for record in [] if args.json else records:
            print(describe(record))
        if not records:
            print(f"no records of session {args.session} in {path}", file=sys.stderr)
        return 0 if records else 1
    key = None
    if args.key:
        try:
            text = Path(args.key[1:]).read_text() if args.key.startswith("@") else args.key
        except OSError as exc:
            raise KeyStoreError(f"cannot read {args.key[1:]}: {exc.strerror}") from None
        key = PublicKey.from_text(text)
    report = verify_log(path, key=key, head=args.head)
    if args.json:
        print(json.dumps(report.as_dict()))
    elif report.ok:
        pinned = "the pinned key" if report.key_pinned else "the key recorded in the log"
        print(f"{path}: intact, {report.records} records, {report.checkpoints} checkpoints")
        print(f"head {report.head}, signed by {report.key_id} ({pinned})")
    else:
        print(f"{path}: BROKEN at record {report.first_bad}: {report.problem}")
    if not report.key_pinned:
        print("warning: no key pinned (no key file beside the log, no --key): a log rewritten and re-signed "
              "with another key would pass", file=sys.stderr)  # fmt: skip
    return 0 if report.ok else 1


def _schema(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in message_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(message_schemas())} schemas to {out}")
    return 0


if __name__ == "__main__":
    run()
