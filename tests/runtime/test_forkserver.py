"""The fork server's burst path: an agent asks its template for all the hosts of a deployment at once, and gets one
host per request, each adopted by the agent. Run in a fresh process, since the fork server's user becomes a child
subreaper (which a test worker must not)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

AGENT = """
import json, os, sys, time
from pathlib import Path
from microstream.runtime.forkserver import ForkServer

work = Path(sys.argv[1])
server = ForkServer(work / "forkserver.log")
assert server.start(), "no fork server on this machine"
deadline = time.monotonic() + 120
while not server.check_ready(0.5):
    assert time.monotonic() < deadline, (work / "forkserver.log").read_text()
# each host runs host_main with an argument it rejects: it says so in its own log and exits with status 2
hosts = [("microstream.runtime.host_main", ["--control", "ipc://x", "--job", "j", "--vnode", f"v{i}", f"--extra{i}"],
          work / f"host{i}.log") for i in range(4)]
pids = server.fork_many(hosts)


def reap(pid):
    # the host's exit status: it is our child once the template's intermediate process has exited (a moment after
    # the template answered), and it exits only then (it waits to be adopted)
    deadline = time.monotonic() + 60
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            assert time.monotonic() < deadline, f"host {pid} never became our child"
            time.sleep(0.01)


codes = {pid: os.waitstatus_to_exitcode(reap(pid)) for pid in pids}
server.close()
print(json.dumps({"pids": pids, "codes": codes, "forked": server.forked,
                  "logs": [(work / f"host{i}.log").read_text() for i in range(4)]}))
"""


def test_a_burst_of_hosts_is_forked_in_one_round_each_adopted_by_the_agent(tmp_path):
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(AGENT), str(tmp_path)], capture_output=True,
                       text=True, cwd=ROOT, timeout=170)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(set(out["pids"])) == 4 and None not in out["pids"]
    assert out["forked"] == 4
    assert set(out["codes"].values()) == {2}
    for i, log in enumerate(out["logs"]):  # every request served once, by its own host
        assert f"unrecognized arguments: --extra{i}" in log, log
