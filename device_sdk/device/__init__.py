"""The device side of the bus: `DeviceClient`, what a speaker, glasses or phone links to ask, answer
with a signed mandate, wake, and send images and audio."""
