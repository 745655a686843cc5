"""Broker security: roles and ACLs, the Mosquitto files, a test CA, and `device-sdk provision`
(docs/security.md)."""
