"""`device-sdk conformance`: the check of a device under test, reached over the bus only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from device_sdk.bus.password import broker_options, broker_url
from device_sdk.commands import Commands
from device_sdk.consent.keys import PublicKey
from device_sdk.protocol.errors import ConfigError, KeyStoreError
from device_sdk.protocol.fields import DeviceKind
from device_sdk.terminal import printable

from .requirements import musts_held
from .run import ConformanceRun


def register(commands: Commands) -> None:
    check = commands.add(
        "conformance",
        "drive a device under test through the protocol's requirements, as a gateway would",
        run=_conformance,
        description="Drives the device over the bus only (retained status, will, heartbeat, sessions, mandates, "
        "refusals, reconnect, audio, errors), directing its user through its test mode (docs/conformance.md). "
        "Exits 0 when every MUST that ran passed, 1 when one failed, 2 when it could not run.",
    )
    broker_options(check, "the MQTT broker the device is on (a test bus with no gateway serving it)", required=True)
    check.add_argument("--device-id", required=True, metavar="ID", help="the device under test")
    check.add_argument(
        "--kind",
        choices=[k.value for k in DeviceKind if k is not DeviceKind.OTHER],
        help="what the device is (default: the kind in its retained device.info)",
    )
    check.add_argument(
        "--device-key",
        type=Path,
        metavar="FILE",
        help="its public signing key: base64url, JWK or PEM (default: device.info's public_key)",
    )
    check.add_argument("--json", action="store_true", help="print the report as one JSON object")


async def _conformance(args: argparse.Namespace) -> int:
    url = broker_url(args.broker, args.broker_password_file)
    assert url is not None
    key = None
    if args.device_key is not None:
        try:
            key = PublicKey.from_text(args.device_key.read_text(encoding="utf-8"))
        except OSError as exc:
            raise KeyStoreError(f"cannot read {args.device_key}: {exc.strerror}") from None
    kind = DeviceKind(args.kind) if args.kind else None
    if kind is DeviceKind.OTHER:
        raise ConfigError("--kind is speaker, glasses or phone")
    result = await ConformanceRun(url, args.device_id, kind=kind, device_key=key).run()
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        for r in result["requirements"]:
            print(printable(f"{r['result']:<8} {r['level']:<6} {r['id']:<24} {r['evidence']}"))
        print(
            f"{result['device_id']} ({result['kind']}): {result['passed']} passed, {result['failed']} failed, "
            f"{result['skipped']} skipped in {result['seconds']} s"
        )
    return 0 if musts_held(result) else 1
