"""The MQTT topic map: one place that builds and parses every topic, with the version in the path.

See docs/protocol.md for who publishes where, at which QoS, retained or not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ErrorCode, ProtocolError

DEFAULT_ROOT = "shop"
VERSION_SEGMENT = "v1"
DEFAULT_AGENT_GROUP = "agents"
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_id(value: str, what: str = "id") -> str:
    """Refuse an identifier that could escape its topic level (`/`, `+`, `#`) or is empty or too long."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ProtocolError(f"{what} {value!r} is not 1-64 of [A-Za-z0-9_.-]", ErrorCode.BAD_MESSAGE)
    return value


@dataclass(frozen=True)
class Topics:
    """Topic names under `<root>/v1/`."""

    root: str = DEFAULT_ROOT

    @property
    def base(self) -> str:
        return f"{self.root}/{VERSION_SEGMENT}"

    # device topics
    def device_status(self, device_id: str) -> str:
        return f"{self.base}/device/{check_id(device_id, 'device id')}/status"

    def device_controller(self, device_id: str) -> str:
        return f"{self.base}/device/{check_id(device_id, 'device id')}/controller"

    def device_up(self, device_id: str) -> str:
        return f"{self.base}/device/{check_id(device_id, 'device id')}/up"

    def device_step_up(self, device_id: str) -> str:
        """The PIN a device's user said or typed (`step_up`): the device writes it, only gateways read it."""
        return f"{self.base}/device/{check_id(device_id, 'device id')}/step_up"

    def device_down(self, device_id: str) -> str:
        return f"{self.base}/device/{check_id(device_id, 'device id')}/down"

    def device_suggestion(self, device_id: str) -> str:
        """`suggestion.offer`s to the device (agent-initiated sessions): gateways write, the device reads."""
        return f"{self.base}/device/{check_id(device_id, 'device id')}/suggestion"

    def device_suggestion_result(self, device_id: str) -> str:
        """The device's `suggestion.result`s: it writes, gateways read."""
        return f"{self.base}/device/{check_id(device_id, 'device id')}/suggestion_result"

    def device_audio(self, device_id: str) -> str:
        return f"{self.base}/device/{check_id(device_id, 'device id')}/audio"

    def device_image(self, device_id: str) -> str:
        return f"{self.base}/device/{check_id(device_id, 'device id')}/image"

    def device_info(self, device_id: str) -> str:
        """Retained `device.info`: what the device's zeroconf TXT record says, on the bus."""
        return f"{self.base}/device/{check_id(device_id, 'device id')}/info"

    def all_devices(self, leaf: str) -> str:
        """Filter for one leaf (`status`, `up`, `controller`...) of every device."""
        return f"{self.base}/device/+/{leaf}"

    # gateway and agent topics
    def gateway_status(self, gateway_id: str) -> str:
        return f"{self.base}/gateway/{check_id(gateway_id, 'gateway id')}/status"

    def all_gateways_status(self) -> str:
        return f"{self.base}/gateway/+/status"

    def agent_request(self) -> str:
        return f"{self.base}/agent/request"

    def agent_request_shared(self, group: str = DEFAULT_AGENT_GROUP) -> str:
        return f"$share/{check_id(group, 'group')}/{self.agent_request()}"

    def agent_reply(self, gateway_id: str) -> str:
        return f"{self.base}/agent/reply/{check_id(gateway_id, 'gateway id')}"

    # phone OEM intents
    def oem_intent(self, oem_id: str, device_id: str) -> str:
        """Where an OEM's assistant publishes signed intents (compact JWS) for one phone's bridge."""
        return f"{self.base}/oem/{check_id(oem_id, 'OEM id')}/{check_id(device_id, 'device id')}/intent"

    def oem_reply(self, oem_id: str, device_id: str) -> str:
        """Where a phone's intent bridge answers the OEM with `intent.result` messages."""
        return f"{self.base}/oem/{check_id(oem_id, 'OEM id')}/{check_id(device_id, 'device id')}/reply"

    def oem_intents_for(self, device_id: str) -> str:
        """Filter for every OEM's intents for one phone."""
        return f"{self.base}/oem/+/{check_id(device_id, 'device id')}/intent"

    def errors(self) -> str:
        return f"{self.base}/errors"

    def everything(self) -> str:
        return f"{self.base}/#"

    def device_of(self, topic: str) -> tuple[str, str]:
        """`(device_id, leaf)` of a device topic, or `ProtocolError(wrong_topic)`."""
        parts = topic.split("/")
        if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != self.base or parts[2] != "device":
            raise ProtocolError(f"not a device topic: {topic}", ErrorCode.WRONG_TOPIC)
        return check_id(parts[3], "device id"), parts[4]

    def gateway_of(self, topic: str) -> str:
        parts = topic.split("/")
        if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != self.base or parts[2] != "gateway":
            raise ProtocolError(f"not a gateway topic: {topic}", ErrorCode.WRONG_TOPIC)
        return check_id(parts[3], "gateway id")
