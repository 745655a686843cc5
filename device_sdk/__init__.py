"""Connect AI glasses, smart speakers and phone assistants to a shopping agent, with on-device
confirmation before any checkout.

What a device links, in one import (`from device_sdk import DeviceClient, SigningKey`): the device
client and its offers, the voice assistant and its sources, the device's signing key, the bus, the
decisions and outcomes, and the error root. Everything else lives in the room named for it
(docs/architecture.md): `device_sdk.protocol`, `.bus`, `.media`, `.consent`, `.device`,
`.discovery`, `.voice` and, behind the bus, `.platform`.
"""

from device_sdk.bus.mqtt import MqttBus
from device_sdk.bus.url import BrokerUrl
from device_sdk.consent.keys import PublicKey, SigningKey
from device_sdk.device.client import DeviceClient, HealthEvent
from device_sdk.device.offer import Offer
from device_sdk.protocol.errors import DeviceSdkError, ErrorCode, RemoteError
from device_sdk.protocol.fields import Capability, Decision, DeviceKind, Modality, Outcome
from device_sdk.protocol.messages import OrderResult
from device_sdk.voice.assistant import VoiceAssistant, VoiceConfig, VoiceRun
from device_sdk.voice.listener import WakeWord
from device_sdk.voice.sources import MicrophoneSource, StreamSource, WavSource

__all__ = [
    "BrokerUrl",
    "Capability",
    "Decision",
    "DeviceClient",
    "DeviceKind",
    "DeviceSdkError",
    "ErrorCode",
    "HealthEvent",
    "MicrophoneSource",
    "Modality",
    "MqttBus",
    "Offer",
    "OrderResult",
    "Outcome",
    "PublicKey",
    "RemoteError",
    "SigningKey",
    "StreamSource",
    "VoiceAssistant",
    "VoiceConfig",
    "VoiceRun",
    "WakeWord",
    "WavSource",
]
