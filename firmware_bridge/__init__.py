"""Wire protocols that device firmware speaks and the adapters that carry them onto the bus.

The BLE GATT profile and frame codec, and OEM intent intake, arrive with their own issues.
Native MQTT devices (smart speakers) speak the protocol in docs/protocol.md directly.
"""
