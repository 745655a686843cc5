"""The protocol as an AsyncAPI 3.0 document, made from the message models and the topic map.

`device-sdk asyncapi > docs/asyncapi.yaml`. Every message model is in `components.messages` once,
its payload the model's JSON Schema (the schemas of all models in `components.schemas`); each topic
of the map is a channel (its address built by `Topics`, the ids as parameters) that lists the
messages it carries; and each channel has one `send` operation: who publishes there, at which QoS,
retained or not (the MQTT binding). A test keeps the checked-in file equal to this output and valid
against the AsyncAPI 3.0 JSON Schema.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from .fields import MAX_PAYLOAD, PROTOCOL_VERSION
from .messages import MESSAGE_TYPES
from .suggestions import SuggestionOffer, SuggestionResult
from .topics import Topics

_DEVICE, _GATEWAY, _OEM = "DEVICEID", "GATEWAYID", "OEMID"
PARAMETERS = {
    "device_id": (_DEVICE, "The device's id: 1 to 64 of A-Z a-z 0-9 _ . -"),
    "gateway_id": (_GATEWAY, "The gateway's id: 1 to 64 of A-Z a-z 0-9 _ . -"),
    "oem_id": (_OEM, "The phone OEM's id: 1 to 64 of A-Z a-z 0-9 _ . -"),
}
RAW_MESSAGES = {
    "audio.chunk": ("application/octet-stream", "A binary audio chunk of a stream that `audio.start` opened "
                    "(framing: docs/protocol.md, Audio)."),
    "image.jpeg": ("image/jpeg", "One JPEG of at most 1 MiB, metadata stripped; an `agent.request` names it by "
                   "`image_ref` (`sha256:` and the hex SHA-256 of these bytes)."),
    "oem.intent": ("application/jose", "A signed intent: a compact JWS, not JSON (docs/phone.md)."),
}  # fmt: skip
"""The payloads on the bus that are not JSON messages: name, content type, description."""
MODELS: tuple[type[BaseModel], ...] = (*MESSAGE_TYPES, SuggestionOffer, SuggestionResult)
"""Every JSON message: those of `decode`, and the suggestions' on their own topics."""


@dataclass(frozen=True)
class Channel:
    """One family of topics: its address, who publishes and reads, and what it carries."""

    name: str
    address: Callable[[Topics], str]
    sender: str
    summary: str
    qos: int
    retained: bool
    messages: tuple[str, ...]


CHANNELS = (
    Channel("deviceStatus", lambda t: t.device_status(_DEVICE), "device", "Online or not; the last will says "
            "online=false.", 1, True, ("device.status",)),
    Channel("deviceInfo", lambda t: t.device_info(_DEVICE), "device", "What the device is: kind, capabilities, "
            "protocol, firmware, room, locale.", 1, True, ("device.info",)),
    Channel("deviceController", lambda t: t.device_controller(_DEVICE), "gateway", "The gateway that controls "
            "the device.", 1, True, ("controller.claim",)),
    Channel("deviceUp", lambda t: t.device_up(_DEVICE), "device", "What the device says to its controller "
            "(ping at QoS 0).", 1, False, ("agent.request", "confirmation.result", "order.status", "handover",
            "transcript", "wake", "audio.start", "audio.stop", "ping")),
    Channel("deviceStepUp", lambda t: t.device_step_up(_DEVICE), "device", "The user's step-up PIN; only "
            "gateways read it.", 1, False, ("step_up",)),
    Channel("deviceDown", lambda t: t.device_down(_DEVICE), "gateway", "What the controller says to the "
            "device (pong at QoS 0).", 1, False, ("confirmation.request", "handed_over", "order.result",
            "order.status.result", "step_up.result", "wake.result", "error", "pong", "conformance.control")),
    Channel("deviceSuggestion", lambda t: t.device_suggestion(_DEVICE), "gateway", "Suggestions the platform "
            "offers the device (docs/protocol.md, Suggestions).", 1, False, ("suggestion.offer",)),
    Channel("deviceSuggestionResult", lambda t: t.device_suggestion_result(_DEVICE), "device", "The device's "
            "answers to suggestions: taken, or declined with the reason.", 1, False, ("suggestion.result",)),
    Channel("deviceAudio", lambda t: t.device_audio(_DEVICE), "device", "Audio chunks of the device's open "
            "streams.", 0, False, ("audio.chunk",)),
    Channel("deviceImage", lambda t: t.device_image(_DEVICE), "device", "A photo for the agent, named by an "
            "agent.request's image_ref.", 1, False, ("image.jpeg",)),
    Channel("gatewayStatus", lambda t: t.gateway_status(_GATEWAY), "gateway", "Online or not; the last will "
            "says online=false.", 1, True, ("gateway.status",)),
    Channel("agentRequest", lambda t: t.agent_request(), "gateway", "Requests for the agent workers (shared "
            "subscription $share/agents/...).", 1, False, ("agent.request",)),
    Channel("agentReply", lambda t: t.agent_reply(_GATEWAY), "agent worker", "The agent's answer to one "
            "gateway.", 1, False, ("checkout.proposal", "error")),
    Channel("errors", lambda t: t.errors(), "anyone", "Errors about a message that has no one to answer.",
            1, False, ("error",)),
    Channel("oemIntent", lambda t: t.oem_intent(_OEM, _DEVICE), "a phone OEM's assistant", "Signed intents "
            "for one phone's intent bridge.", 1, False, ("oem.intent",)),
    Channel("oemReply", lambda t: t.oem_reply(_OEM, _DEVICE), "the phone's intent bridge", "The bridge's "
            "answers to the OEM.", 1, False, ("intent.result",)),
)  # fmt: skip
"""The topic map (docs/protocol.md), channel by channel."""


def document(topics: Topics | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the protocol under `topics` (default root `shop`)."""
    topics = topics or Topics()
    keyed: list[tuple[type[BaseModel], JsonSchemaMode]] = [(model, "validation") for model in MODELS]
    refs, defs = models_json_schema(keyed, ref_template="#/components/schemas/{model}")
    messages: dict[str, Any] = {}
    for model in MODELS:
        tag = str(model.model_fields["type"].default)
        messages[tag] = {
            "name": tag,
            "title": model.__name__,
            "summary": " ".join((model.__doc__ or tag).split()),
            "contentType": "application/json",
            "payload": refs[(model, "validation")],
        }
    for name, (content_type, summary) in RAW_MESSAGES.items():
        kind = {"type": "string", "format": "binary"} if content_type != "application/jose" else {"type": "string"}
        messages[name] = {"name": name, "summary": summary, "contentType": content_type, "payload": kind}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in CHANNELS:
        address = channel.address(topics)
        params = {}
        for param, (placeholder, description) in PARAMETERS.items():
            if placeholder in address:
                address = address.replace(placeholder, "{" + param + "}")
                params[param] = {"description": description}
        unknown = [m for m in channel.messages if m not in messages]
        if unknown:
            raise ValueError(f"channel {channel.name} names unknown messages {unknown}")
        channels[channel.name] = {
            "address": address,
            "summary": channel.summary,
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in channel.messages},
            **({"parameters": params} if params else {}),
        }
        retained = "retained" if channel.retained else "not retained"
        operations[f"send_{channel.name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{channel.name}"},
            "summary": f"{channel.sender} publishes (QoS {channel.qos}, {retained})",
            "messages": [{"$ref": f"#/channels/{channel.name}/messages/{m}"} for m in channel.messages],
            "bindings": {"mqtt": {"qos": channel.qos, "retain": channel.retained, "bindingVersion": "0.2.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "device-sdk MQTT device protocol",
            "version": str(PROTOCOL_VERSION),
            "description": (
                "What a device, a gateway and an agent worker say to each other over MQTT 3.1.1 (docs/protocol.md). "
                f"Payloads are compact UTF-8 JSON of at most {MAX_PAYLOAD} bytes with `v` and a `type` naming the "
                "message; amounts are integer minor units. Generated by `device-sdk asyncapi` from the message "
                "models and the topic map: do not edit by hand."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "localhost:8883",
                "protocol": "secure-mqtt",
                "protocolVersion": "3.1.1",
                "description": "A provisioned broker (TLS, a password per client: docs/security.md).",
            },
            "local": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "3.1.1",
                "description": "The embedded broker of the demo and the simulators (loopback).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": defs.get("$defs", {}), "messages": messages},
    }


def render(topics: Topics | None = None) -> str:
    """The document as YAML, as `docs/asyncapi.yaml` holds it."""
    text: str = yaml.safe_dump(document(topics), sort_keys=False, allow_unicode=True, width=100)
    return text
