"""The checkout side: its interface, the fail-closed consent verifier, the risk policy, the
hash-chained audit log, the device keys it trusts and the store they share."""
