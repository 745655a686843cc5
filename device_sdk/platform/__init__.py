"""The side behind the bus, which devices never import: the agent interface, the gateway, the
checkout's verifier, policy and audit log, provisioning, and the timeline tap."""
