"""The MQTT bus: a reconnecting asyncio connection on paho-mqtt, its subscriptions, replies awaited
by id, the embedded broker (amqtt) and a Mosquitto the tests and benches start."""
