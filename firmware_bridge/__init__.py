"""Wire protocols that device firmware speaks and the adapters that carry them onto the bus.

`frames`, `flow`, `gatt`, `link`: glasses over BLE (docs/ble.md). `intents`, `phone`: a phone
OEM's signed intents, on the bus and at a local endpoint (docs/phone.md). Native MQTT devices
(smart speakers) speak the protocol in docs/protocol.md directly.
"""
