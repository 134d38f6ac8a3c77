"""The typed control protocol: every kind round-trips through its frames, unknown kinds and malformed
messages are refused with a clear error, and the frames are those the untyped `msg()` writes (hosts that
still speak it stay compatible)."""

from __future__ import annotations

import json

import cloudpickle
import pytest

from microstream.cluster import messages as cm
from microstream.runtime import protocol as hp
from microstream.runtime.protocol import ControlMessage, ProtocolError, msg

ENDPOINTS = {"vn0": {"endpoint": "tcp://10.0.0.1:5001", "public_key": "k" * 40},
             "vn1": {"endpoint": "tcp://10.0.0.2:5002", "public_key": None}}

# One instance of every kind, with its optional fields set, so that each field crosses the wire once.
EXAMPLES: list[hp.Message] = [
    # agent -> host
    hp.Spec(bind_host="10.0.0.1", blob=b"spec", trusted=["a" * 40], public="p" * 40, secret="s" * 40,
            restoring=True, incoming=True, epoch=2),
    hp.Connect(job="j", endpoints=ENDPOINTS, only="vn1"),
    hp.Start(job="j", only="vn1", blob=b"snapshot"),
    hp.SnapshotRequest(job="j", vnode="vn1", barrier=3, only="vn1", whole={"uri": "tcp:10.0.0.2:4444"}),
    hp.PauseTo(job="j", vnode="vn1", barrier=3),
    hp.Redirect(job="j", vnode="vn1", peer=ENDPOINTS["vn1"]),
    hp.CheckpointRequest(job="j", checkpoint=7),
    hp.CheckpointDone(job="j", checkpoint=7),
    hp.StopHost(),
    # host -> agent
    hp.HostHello(job="j", vnode="vn0", pid=1234),
    hp.HostReady(job="j", vnode="vn0", endpoint="tcp://10.0.0.1:5001", incoming="tcp:10.0.0.1:4444", boot_s=1.5),
    hp.HostStats(job="j", vnode="vn0", stats={"operators": {"t0": {"records_in": 5}}}),
    hp.HostDone(job="j", vnode="vn0", blob=cloudpickle.dumps({"records_in": {}}), stats={"operators": {}}),
    hp.HostFailed(job="j", vnode="vn0", error="ValueError: x", traceback="Traceback ...", operator="map",
                  cause="ValueError: x"),
    hp.HostSnapshot(job="j", vnode="vn0", blob=b"state", whole={"ram_bytes": 10}),
    hp.HostPrecopied(job="j", vnode="vn0", figures={"rounds": 2, "sent_bytes": 1 << 20}),
    hp.HostResumed(job="j", vnode="vn0", at=1700000000.5),
    hp.HostCheckpointed(job="j", vnode="vn0", checkpoint=7, blob=b"state"),
    hp.HostOutput(job="j", vnode="vn0", lines=[["stdout", "saw 3"], ["stderr", "WARNING x"]], dropped=2),
    # client -> coordinator
    cm.Submit(blob=b"graph", wait=False, credits=4),
    cm.StatusRequest(job="j"),
    cm.StopRequest(job="j"),
    cm.Watch(job="j"),
    cm.ShutdownRequest(),
    cm.MigrateRequest(job="j", vnode="vn1", to="node2", whole=True),
    cm.SaveRequest(job="j", vnode="vn1"),
    cm.RestoreRequest(job="j", vnode="vn1", blob=b"snapshot", to="node3"),
    cm.DrainRequest(node="node2", action="undrain"),
    cm.LogsRequest(job="j", follow=True),
    # agent -> coordinator
    cm.Register(name="node1", labels={"room": "a"}, data_host="10.0.0.1", metrics_port=9100, public_key="p" * 40,
                cores=4, memory=4 << 30, arch="aarch64", backends=["process"], python="3.11.7",
                vnodes={"j/vn0": {"state": "running", "pid": 1, "epoch": 2, "endpoint": "tcp://10.0.0.1:5001"}}),
    cm.Heartbeat(name="node1", vnodes={"j/vn0": {"state": "running", "pid": 1, "stats": {}}}, seq=12),
    cm.VnodeReady(job="j", vnode="vn0", endpoint="tcp://10.0.0.1:5001", public_key="p" * 40,
                  incoming="tcp:10.0.0.1:4444", epoch=2),
    cm.VnodeDone(job="j", vnode="vn0", blob=b"result", stats={"operators": {}}, epoch=2),
    cm.VnodeSnapshot(job="j", vnode="vn0", blob=b"state", whole={"ram_bytes": 10}, epoch=2),
    cm.VnodePrecopied(job="j", vnode="vn0", figures={"rounds": 2}, epoch=2),
    cm.VnodeCheckpointed(job="j", vnode="vn0", checkpoint=7, blob=b"state", epoch=2),
    cm.VnodeResumed(job="j", vnode="vn0", at=1700000000.5, epoch=2),
    cm.VnodeFailed(job="j", vnode="vn0", error="ValueError: x", operator="map", cause="ValueError: x", epoch=2),
    cm.VnodeOutput(job="j", vnode="vn0", lines=[["stdout", "saw 3"]], dropped=2, epoch=2),
    cm.ReplicaPart(job="j", checkpoint=7, part=1, parts=3, blob=b"part", keep=3),
    cm.ReplicaStored(job="j", checkpoint=7, bytes=3 << 20, error=None),
    # coordinator -> agent
    cm.Registered(data_keys=["p" * 40]),
    cm.HeartbeatAck(seq=12),
    cm.RegisterFirst(reason="unknown agent"),
    cm.Deploy(job="j", vnode="vn0", blob=b"spec", data_keys=["p" * 40], backend="microvm", restoring=True,
              incoming=True, epoch=2),
    cm.StopJob(job="j", only="vn0", before=2),
    cm.ReplicaFetch(job="j", checkpoint=7),
    cm.ReplicaDrop(job="j"),
    cm.Shutdown(),
    # coordinator -> client
    cm.Error(error="no job 'x'"),
    cm.Rejected(error="no agents are up"),
    cm.Accepted(job="j", placement={"vn0": "node1"}),
    cm.StatusReply(status={"agents": {}, "jobs": {}, "metrics_port": None}),
    cm.Stopped(job="j", state="stopped"),
    cm.Watching(job="j", state="adopting", reason="the coordinator restarted"),
    cm.ShutDown(jobs=["j"], agents=["node1"]),
    cm.Moved(record={"vnode": "vn1", "mode": "save", "from": "node2", "to": None, "saved_bytes": 5}, blob=b"s"),
    cm.DrainStatus(drain={"node": "node2", "state": "stuck", "moved": [], "left": ["j/vn0"],
                          "stuck": {"j/vn0": "pinned"}, "waiting": {}, "moving": None}),
    cm.JobDone(job="j", state="failed", reason="virtual node vn0 failed", operator="map", cause="ValueError: x",
               blob=b"results"),
    cm.JobOutput(job="j", vnode="vn0", agent="node1", lines=[["stdout", "saw 3"]], dropped=2),
    cm.JobLogsReply(job="j", lines=[["vn0", "node1", "stdout", "saw 3"]], received=5, dropped={"vn0": 2}),
]

VOCABULARIES = [hp.TO_HOST, hp.FROM_HOST, cm.TO_COORDINATOR, cm.TO_AGENT, cm.TO_CLIENT]


def _vocabularies_of(message: hp.Message) -> list[hp.Vocabulary]:
    return [v for v in VOCABULARIES if v.kinds.get(message.KIND) is type(message)]


def test_every_kind_has_an_example_and_a_link():
    kinds = {cls for v in VOCABULARIES for cls in v.kinds.values()}
    examples = {type(m) for m in EXAMPLES}
    assert kinds == examples, f"kinds without an example: {kinds - examples}; examples on no link: {examples - kinds}"
    assert len({cls.KIND for cls in kinds}) >= 30


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    frames = message.encode()
    assert all(isinstance(f, bytes) for f in frames)
    for vocabulary in _vocabularies_of(message):
        assert vocabulary.decode(frames) == message
    assert type(message).decode(frames) == message
    # the frames survive a JSON round trip exactly (what a peer in another process sees)
    assert json.loads(frames[1]) == message.header()


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_frames_match_the_untyped_encoding(message):
    blob = getattr(message, "blob", None)
    assert message.encode() == ControlMessage(message.KIND, message.header(), blob).frames()


def test_what_hosts_send_today_decodes():
    """Hosts still build their messages with `msg()`: the agent's vocabulary reads them."""
    result = {"records_in": {"src": 3}}
    done = hp.FROM_HOST.decode(msg("done", result, job="j", vnode="vn0", stats={"x": 1}).frames())
    assert isinstance(done, hp.HostDone) and done.payload() == result and done.stats == {"x": 1}
    failed = hp.FROM_HOST.decode(msg("failed", job="j", vnode="vn0", error="E", traceback="T", operator="map",
                                     cause="C").frames())
    assert failed == hp.HostFailed(job="j", vnode="vn0", error="E", traceback="T", operator="map", cause="C")
    ready = hp.FROM_HOST.decode(msg("ready", job="j", vnode="vn0", endpoint="tcp://h:1").frames())
    assert ready == hp.HostReady(job="j", vnode="vn0", endpoint="tcp://h:1")


def test_optional_fields_left_unset_are_not_in_the_header():
    """A host reads optional keys with `.get`: absent and None must mean the same, so None is not sent."""
    assert cm.StopJob(job="j").header() == {"job": "j"}
    assert hp.StopHost().encode() == [b"stop", b"{}"]
    assert "whole" not in hp.SnapshotRequest(job="j", vnode="v", barrier=1).header()


def test_newer_peers_extra_header_keys_are_ignored():
    frames = ControlMessage("resumed", {"job": "j", "vnode": "v", "at": 1.0, "added_later": True}).frames()
    assert hp.FROM_HOST.decode(frames) == hp.HostResumed(job="j", vnode="v", at=1.0)


def test_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(ProtocolError, match=r"unknown control message 'submitt' to the coordinator; known kinds: "
                                            r"drain, heartbeat, logs, migrate, register"):
        cm.TO_COORDINATOR.decode([b"submitt", b"{}"])
    # a kind of another link is unknown on this one
    with pytest.raises(ProtocolError, match="'deploy' from a host to its agent"):
        hp.FROM_HOST.decode(cm.Deploy(job="j", vnode="v", blob=b"").encode())


def test_same_kind_means_different_things_on_different_links():
    frames = [b"snapshot", json.dumps({"job": "j", "vnode": "v", "barrier": 2}).encode()]
    assert isinstance(hp.TO_HOST.decode(frames), hp.SnapshotRequest)
    assert isinstance(hp.FROM_HOST.decode(frames), hp.HostSnapshot)
    status = {"agents": {"n1": {}}, "jobs": {}, "metrics_port": 1}
    assert cm.TO_CLIENT.decode(cm.StatusReply(status=status).encode()).status == status
    assert cm.TO_COORDINATOR.decode(cm.StatusRequest().encode()) == cm.StatusRequest()


@pytest.mark.parametrize("frames, problem", [
    ([b"heartbeat"], "malformed control message with 1 frames"),
    ([b"heartbeat", b"{not json"], "malformed control message"),
    ([b"heartbeat", b"[1, 2]"], "header is not a JSON object"),
    ([b"\xff\xfe", b"{}"], "malformed control message"),
    ([b"heartbeat", b"{}"], "'heartbeat' lacks name"),
    ([b"vnode_ready", b'{"job": "j"}'], "'vnode_ready' lacks vnode, endpoint .its header has: job."),
    ([b"submit", b'{"wait": true}'], "'submit' lacks its blob"),
])
def test_malformed_messages_are_refused(frames, problem):
    with pytest.raises(ProtocolError, match=problem):
        cm.TO_COORDINATOR.decode(frames)


def test_decoding_as_the_wrong_class_is_refused():
    with pytest.raises(ProtocolError, match="expected a 'register' control message, got 'heartbeat'"):
        cm.Register.decode(cm.Heartbeat(name="n").encode())


def test_a_kind_is_taken_once_per_link():
    with pytest.raises(ValueError, match="already taken"):
        hp.Vocabulary("test", cm.StopRequest, cm.StopJob)


def test_secret_key_never_printed():
    spec = hp.Spec(bind_host="h", blob=b"", public="PUBLIC", secret="SECRET")
    assert "SECRET" not in repr(spec) and "PUBLIC" in repr(spec)
    assert spec.header()["secret"] == "SECRET"  # it does travel, over the agent's private IPC socket


def test_payload_unpickles_the_blob():
    assert cm.Submit(blob=cloudpickle.dumps({"a": 1})).payload() == {"a": 1}
    with pytest.raises(ProtocolError, match="'status' carries no payload"):
        cm.StatusRequest().payload()
