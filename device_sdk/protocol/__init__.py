"""The protocol's vocabulary, shared by every room: the bus messages and their fields, the topic map,
and the one error root whose codes are also the wire's error codes (docs/protocol.md)."""
