"""`device-sdk`: the demo, the message schemas and the bus benchmark."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .messages import message_schemas


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

    serve = commands.add_parser(
        "serve", help="run the backend (broker, gateway, reference agent, checkout) for devices"
    )
    serve.add_argument("--broker", default=None, help="mqtt://host:port to use (default: an embedded broker)")
    serve.add_argument("--port", type=int, default=1883, help="port of the embedded broker (default 1883)")
    serve.add_argument("--host", default="127.0.0.1", help="address of the embedded broker (default 127.0.0.1)")

    schema = commands.add_parser("schema", help="write the JSON Schema of every bus message")
    schema.add_argument("--out", type=Path, required=True, help="directory for <type>.schema.json files")

    bench = commands.add_parser("bench", help="benchmarks")
    bench_kinds = bench.add_subparsers(dest="bench", required=True)
    bus = bench_kinds.add_parser("bus", help="agent round trips through the embedded broker and Mosquitto")
    bus.add_argument("-n", type=int, default=5000, help="round trips per measurement")
    bus.add_argument("--concurrency", type=int, default=32, help="requests in flight for the throughput run")
    bus.add_argument("--mosquitto", default=None, help="mqtt://host:port of a running Mosquitto (default: start one)")
    bus.add_argument("--json", action="store_true")

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
    from .bench import run_bench_bus

    return asyncio.run(run_bench_bus(args))


def run() -> None:
    """Console entry point: Ctrl-C ends quietly."""
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130) from None


async def _demo(args: argparse.Namespace) -> int:
    from simulators.scenario import DEFAULT_REPLY, DEFAULT_SAY, run_demo

    from .errors import DeviceSdkError

    say = args.say or DEFAULT_SAY
    replies = args.reply if args.reply is not None else [DEFAULT_REPLY]
    quiet = args.json
    if not quiet:
        print(f'user says: "{say}"')
    try:
        result = await run_demo(
            say,
            replies,
            broker=args.broker,
            on_step=None if quiet else lambda step: print(step.line()),
            present=None if quiet else lambda text: print(f"  speaker says: {text}"),
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
        order = result.run.result
        error = f" ({result.run.error})" if result.run.error else ""
        print(f"outcome: {result.outcome}{error}" + (f", order {order.order_id}" if order and order.order_id else ""))
        print(f"broker: {result.broker}; orders placed: {result.orders_placed}")
    return 0 if result.ordered else 1


async def _serve(args: argparse.Namespace) -> int:
    import contextlib

    from simulators.scenario import ShopBackend

    from .embedded_broker import EmbeddedBroker
    from .mqtt import BrokerUrl

    async with contextlib.AsyncExitStack() as stack:
        if args.broker:
            url, shared = BrokerUrl.parse(args.broker), None
        else:
            broker = EmbeddedBroker(args.host, args.port)
            url, shared = (await stack.enter_async_context(broker)).url, False
        backend = await stack.enter_async_context(ShopBackend(url, shared=shared))
        print(f"serving devices on {url} as gateway {backend.gateway.gateway_id}; Ctrl-C stops", flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    return 0


def _schema(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in message_schemas().items():
        (out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {len(message_schemas())} schemas to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
