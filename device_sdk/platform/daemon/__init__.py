"""The gateway as a long-running service (`device-sdk gateway`): its configuration, logs, health and
metrics endpoints, and its life from start to a drained shutdown."""
