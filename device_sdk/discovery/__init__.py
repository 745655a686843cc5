"""Zeroconf (mDNS / DNS-SD): devices, gateways and brokers advertise themselves with TXT records, and
are found on the LAN (docs/discovery.md)."""
