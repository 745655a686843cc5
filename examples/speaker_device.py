"""A device of your own against a running backend: what a smart-speaker integration looks like.

Give the device its signing key (registered with the checkout's verifier), start the backend in
one terminal, then run the device in another:

    .venv/bin/device-sdk keys create my-speaker     # ~/.local/state/device-sdk/keys/my-speaker.pem
    .venv/bin/device-sdk serve                      # embedded broker on 127.0.0.1:1883
    .venv/bin/python examples/speaker_device.py --say "buy two bags of rice"

Without --reply it asks for the answer on the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from device_sdk import Decision, DeviceClient, DeviceSdkError, Modality, SigningKey
from device_sdk.state import default_key_file
from device_sdk.voice.replies import REPROMPT, ReplyDialog


async def main(args: argparse.Namespace) -> int:
    key = SigningKey.load(args.key or default_key_file(args.device_id))
    async with DeviceClient(args.broker, args.device_id, key=key) as device:
        try:
            offer = await device.ask(args.say)
        except DeviceSdkError as exc:
            print(f"speaker says: sorry, {exc.text}")
            return 1
        print(f"speaker says: {offer.readback}")
        replies = iter(args.reply) if args.reply else None
        dialog = ReplyDialog()
        while True:
            heard = next(replies, None) if replies is not None else await asyncio.to_thread(input, "you say: ")
            decision = dialog.feed(heard)
            if decision is not None:
                break
            print(f"speaker says: {REPROMPT}")
        result = await device.answer(offer, decision, modality=Modality.TEXT, heard=" / ".join(dialog.heard))
        print(f"outcome: {result.outcome}" + (f", order {result.order_id}" if result.order_id else ""))
        if result.reason:
            print(f"reason: {result.reason}")
        return 0 if decision is Decision.CONFIRM and result.order_id else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--device-id", default="my-speaker")
    parser.add_argument("--say", default="buy two packs of AA batteries")
    parser.add_argument("--reply", action="append", help="answer(s) to the read-back instead of the terminal")
    parser.add_argument("--key", type=Path, default=None, help="the device's key file (default: keys create's)")
    raise SystemExit(asyncio.run(main(parser.parse_args())))
