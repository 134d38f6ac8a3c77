"""A real mosquitto on loopback for the connector tests, and small paho helpers to talk to it."""

from __future__ import annotations

import json
import threading
import time

import pytest

from microstream.connectors.broker import Mosquitto, ensure_mosquitto


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    try:
        return ensure_mosquitto(progress=lambda _: None)
    except RuntimeError as exc:  # pragma: no cover - only where apt-get cannot run
        pytest.skip(f"MQTT TESTS SKIPPED: mosquitto is not installed and cannot be installed here: {exc}")


@pytest.fixture
def broker(mosquitto_binary):
    with Mosquitto() as b:
        yield b


def connect(broker, client_id: str = "", clean: bool = True):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                         protocol=mqtt.MQTTv311)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    assert connected.wait(10), "could not connect to the test broker"
    return client


def prime(broker, client_id: str, topics, qos: int = 1) -> None:
    """Create the persistent session a QoS 1 source will resume, so what is published from now on waits for it."""
    client = connect(broker, client_id, clean=False)
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe([(t, qos) for t in ([topics] if isinstance(topics, str) else topics)])
    assert done.wait(10)
    client.disconnect()
    client.loop_stop()


def publish(broker, messages, qos: int = 1) -> None:
    """Publish (topic, payload) pairs, payloads as dicts (JSON), str or bytes; wait until all are acknowledged."""
    client = connect(broker)
    infos = [client.publish(t, json.dumps(p) if isinstance(p, (dict, list)) else p, qos) for t, p in messages]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


class Subscriber:
    """Collect what arrives on topic filters, for checking sinks."""

    def __init__(self, broker, topics) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = connect(broker)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe([(t, 1) for t in ([topics] if isinstance(topics, str) else topics)])
        assert done.wait(10)

    def wait(self, n: int, timeout: float = 10) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
