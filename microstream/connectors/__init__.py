"""Connectors to the world outside a pipeline, one job per module: `mqtt` (MQTT source and sink), `broker`
(a local mosquitto for tests and demos), `device` (sensor files polled on the node)."""
