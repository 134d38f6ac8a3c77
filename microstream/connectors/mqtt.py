"""What the MQTT source and sink share: the broker's URL and the paho client (paho-mqtt, the reference
MQTT client: reconnects, QoS 1 flows, manual acks).
"""

from __future__ import annotations

from urllib.parse import urlparse

from ..core.errors import PipelineError


def parse_broker(url: str, operator: str) -> tuple[str, int, bool]:
    """(host, port, tls) from `mqtt://host:port` or `mqtts://host:port` (or a bare `host:port`)."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parsed.hostname:
        raise PipelineError(operator, f"broker {url!r} is not an MQTT URL", "e.g. broker='mqtt://127.0.0.1:1883'")
    tls = parsed.scheme in ("mqtts", "ssl")
    return parsed.hostname, parsed.port or (8883 if tls else 1883), tls


def new_client(client_id: str, clean: bool, manual_ack: bool, username: str | None, password: str | None,
               tls: bool):
    from ..core.optional import require

    mqtt = require("paho.mqtt.client", "MQTT (read_mqtt, ms.sinks.mqtt)")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                         protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    if username is not None:
        client.username_pw_set(username, password)
    if tls:
        client.tls_set()
    client.reconnect_delay_set(min_delay=0.5, max_delay=30)
    return client
