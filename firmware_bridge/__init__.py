"""Wire protocols that device firmware speaks and the adapters that carry them onto the bus.

`frames`: the BLE frame protocol (docs/ble.md). The GATT profile, the bleak link and OEM intent
intake arrive with their own issues.
Native MQTT devices (smart speakers) speak the protocol in docs/protocol.md directly.
"""
