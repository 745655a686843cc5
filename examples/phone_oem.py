"""A phone maker's side of the intent bridge: the system assistant that signs intents, and the system
sheet service that shows the order and signs the consent mandate with the phone's key.

    .venv/bin/device-sdk keys create phone-1 --kind phone                  # the phone's key, registered
    .venv/bin/python examples/phone_oem.py keys --out oem.pem --trust oem-keys.json
    .venv/bin/device-sdk serve                                             # the backend, on 127.0.0.1:1883
    .venv/bin/firmware-bridge phone --broker mqtt://127.0.0.1:1883 --oem-keys oem-keys.json \\
        --listen 127.0.0.1:8787 --sheet-url http://127.0.0.1:8788/sheet
    .venv/bin/python examples/phone_oem.py ask --say "buy two packs of AA batteries"

`ask` serves the sheet on 127.0.0.1:8788 (Confirm or Cancel asked on the terminal unless --tap),
sends the signed intent to the bridge's endpoint and prints how it ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from device_sdk import Modality, SigningKey
from device_sdk.consent.mandate import mandate_for
from device_sdk.consent.readback import display_digest
from device_sdk.protocol.fields import new_id
from device_sdk.protocol.messages import ConfirmationRequest
from device_sdk.state import default_key_file
from firmware_bridge.intents import ACTION_BUY, IntentExtras, OemIntent, OemKeys, sign_intent


def make_keys(args: argparse.Namespace) -> int:
    key = SigningKey.generate()
    key.save(args.out)
    args.trust.write_text(OemKeys([(args.oem_id, key.public)]).dump())
    print(f"OEM key {key.public.kid} in {args.out}; the bridge trusts it through {args.trust}")
    return 0


async def ask(args: argparse.Namespace) -> int:
    phone_key = SigningKey.load(args.phone_key or default_key_file(args.device_id))

    async def sheet(request: web.Request) -> web.Response:
        body = await request.json()
        text, offer = body["text"], ConfirmationRequest.model_validate(body["confirmation"])
        print("sheet:", *text.split("\n"), sep="\n  ")
        tap = args.tap or await asyncio.to_thread(input, "confirm or cancel? ")
        if tap.strip().lower() != "confirm":
            return web.json_response({"decision": "decline"})
        mandate = mandate_for(offer, phone_key, device_id=args.device_id, modality=Modality.PHONE_SHEET,
                              display_digest=display_digest(text))  # fmt: skip
        return web.json_response({"decision": "confirm", "mandate": mandate})

    app = web.Application()
    app.router.add_post("/sheet", sheet)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.sheet_port).start()
    try:
        intent = OemIntent(
            intent_id=new_id("int"), action=ACTION_BUY, extras=IntentExtras(query=args.say),
            source_package="com.example.assistant", oem_id=args.oem_id, device_id=args.device_id,
            timestamp=int(time.time() * 1000),
        )  # fmt: skip
        token = sign_intent(SigningKey.load(args.oem_key), intent)
        async with aiohttp.ClientSession() as http, http.post(args.bridge, data=token) as response:
            result = json.loads(await response.read())
    finally:
        await runner.cleanup()
    print(f"HTTP {response.status}: {result.get('outcome') or result.get('code')}", result.get("order_id") or "")
    if result.get("deep_link"):
        print("handed to the app:", result["deep_link"])
    return 0 if result.get("outcome") == "ordered" else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oem-id", default="oem-example")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="make the OEM's signing key and the bridge's trust file")
    keys.add_argument("--out", type=Path, default=Path("oem.pem"))
    keys.add_argument("--trust", type=Path, default=Path("oem-keys.json"))
    send = commands.add_parser("ask", help="serve the sheet, send one intent, print the outcome")
    send.add_argument("--say", default="buy two packs of AA batteries")
    send.add_argument("--oem-key", type=Path, default=Path("oem.pem"))
    send.add_argument("--device-id", default="phone-1")
    send.add_argument("--phone-key", type=Path, default=None, help="default: where `device-sdk keys create` puts it")
    send.add_argument("--bridge", default="http://127.0.0.1:8787/v1/intents")
    send.add_argument("--sheet-port", type=int, default=8788)
    send.add_argument("--tap", choices=["confirm", "cancel"], default=None, help="default: ask on the terminal")
    args = parser.parse_args()
    return make_keys(args) if args.command == "keys" else asyncio.run(ask(args))


if __name__ == "__main__":
    sys.exit(main())
