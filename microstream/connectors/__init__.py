"""Connections to the world outside a pipeline that sources and sinks share: the MQTT broker URL and paho
client (`mqtt`), and a local mosquitto broker for tests and demos (`broker`)."""
