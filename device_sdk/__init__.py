"""Connect devices to a shopping agent: typed messages, the MQTT device protocol, gateway and confirmation gate."""
