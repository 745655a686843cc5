"""Simulated devices, a reference agent core and a checkout stand-in that run the real protocol stacks."""
