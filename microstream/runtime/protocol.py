"""Control messages between clients, the coordinator, agents and hosts.

A message is a ZeroMQ multipart: [kind, JSON header, optional blob]. Blobs carry cloudpickled
jobs and results; they are only ever unpickled after the peer has been authenticated (CURVE on
network sockets, file permissions on the agent's local IPC socket).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import cloudpickle


@dataclass
class ControlMessage:
    kind: str
    header: dict[str, Any]
    blob: bytes | None = None

    def frames(self) -> list[bytes]:
        frames = [self.kind.encode(), json.dumps(self.header, default=str).encode()]
        if self.blob is not None:
            frames.append(self.blob)
        return frames

    @staticmethod
    def parse(frames: list[bytes]) -> ControlMessage:
        if len(frames) < 2:
            raise ValueError(f"malformed control message with {len(frames)} frames")
        blob = bytes(frames[2]) if len(frames) > 2 else None
        return ControlMessage(bytes(frames[0]).decode(), json.loads(bytes(frames[1])), blob)

    def payload(self) -> Any:
        if self.blob is None:
            raise ValueError(f"message '{self.kind}' carries no payload")
        return cloudpickle.loads(self.blob)


def msg(kind: str, blob_obj: Any = None, **header: Any) -> ControlMessage:
    blob = cloudpickle.dumps(blob_obj) if blob_obj is not None else None
    return ControlMessage(kind, header, blob)
