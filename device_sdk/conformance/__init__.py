"""The conformance check: a device under test driven over the bus, as a gateway would, through the
protocol's requirements (docs/protocol.md, Requirements; docs/conformance.md)."""
