"""The gateway: serves devices on the bus, asks the agent, and gates every checkout on the device's
own confirmation; controller claims; audio intake; the session flow and one session's state machine;
wake-word arbitration per room."""
