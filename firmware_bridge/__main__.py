"""`python -m firmware_bridge` is `firmware-bridge`."""

from .cli import run

run()
