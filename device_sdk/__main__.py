"""`python -m device_sdk`: the `device-sdk` command line."""

from device_sdk.cli import run

run()
