"""Fork-server hosts: an agent keeps one warm *template* process and forks virtual-node hosts from it.

The template (`python -m microstream.runtime.forkserver`, started by the `process` backend when its agent starts)
imports numpy, numba, pyzmq, cloudpickle and the host runtime, runs a tiny job through the local runtime so the
common kernels are loaded from numba's cache, freezes the garbage collector (so collections do not touch, and
copy, the shared pages) and says `ready`. A host is then one `fork()` away: it starts in milliseconds and shares
the template's pages copy-on-write (its PSS is a fraction of a spawned host's RSS).

A forked host must be indistinguishable from a spawned one (`backends.spawn_host`):

- **Parent.** The template double-forks and the agent is a *child subreaper* (PR_SET_CHILD_SUBREAPER), so the
  host is re-parented to the agent: `ParentWatch` sees the agent as its parent (an agent that dies is noticed as
  before), the agent reaps it with `waitpid` and sees its exit status (a kill -9 is `-9`, as `Popen` reports
  it), and a template that dies takes no host with it. The host waits until it has been adopted before it runs.
- **No threads, no ZeroMQ in the template.** Threads do not survive a fork and a ZeroMQ context must not be
  shared across one: the template refuses to say `ready` unless it is single-threaded (OpenBLAS is held to one
  thread), and it never creates a context; the host creates its own after the fork, as a spawned host does.
- **Output, signals, seeds.** The host's stdin is /dev/null and its stdout and stderr are its log file; the
  template sets no signal handler, so the host has the interpreter's defaults, as a fresh process; `random` and
  numpy's global generator are reseeded (forked hosts must not share random streams); every other inherited
  descriptor is closed.

The agent's side (`ForkServer`) never blocks for long: a host is forked only if the template is ready (else it
is spawned), a template that has died is started again (at most every `RESTART_EVERY` s), and a fork request
that gets no answer within `FORK_TIMEOUT` s kills the template and falls back to spawning.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

FORK_TIMEOUT = 5.0     # s for the template to answer a fork request
ADOPT_TIMEOUT = 5.0    # s for a forked host to be re-parented to its agent
RESTART_EVERY = 10.0   # s between two starts of a template that keeps dying
_PR_SET_CHILD_SUBREAPER = 36


def enabled() -> bool:
    """Fork-server hosts are on unless `MICROSTREAM_FORKSERVER=0` (then every host is spawned); Linux only."""
    return os.environ.get("MICROSTREAM_FORKSERVER", "1") != "0" and sys.platform.startswith("linux")


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (the hosts its template double-forks)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class ForkServer:
    """The agent's end: starts the template, asks it for hosts, restarts it when it dies."""

    def __init__(self, log_path: Path, log: Any = None) -> None:
        self.log_path = log_path
        self.log = log or (lambda line: None)
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.template_pid: int | None = None
        self._buffer = b""
        self._started_at = -RESTART_EVERY
        self.forked = 0   # hosts forked so far (the rest were spawned)

    def start(self) -> bool:
        """Start (or start again) the template; False if this machine cannot adopt forked hosts."""
        if not become_subreaper():
            self.log("fork server: cannot become a child subreaper; hosts will be spawned")
            return False
        self.close()
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "NUMBA_NUM_THREADS": "1"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "microstream.runtime.forkserver", "--agent",
                                          str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, cwd=os.getcwd(), env=env)
        self._buffer, self.ready, self.template_pid = b"", False, self.proc.pid
        self._started_at = time.monotonic()
        return True

    def _line(self, timeout: float) -> dict[str, Any] | None:
        """The template's next answer, or None if none comes within `timeout` s (or it has gone)."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if not select.select([fd], [], [], max(0.0, left))[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_ready(self, wait: float = 0.0) -> bool:
        """Has the template said `ready`? Restarts a template that has died (not more often than every
        `RESTART_EVERY` s)."""
        if not self.alive():
            if self.proc is not None:
                self.log(f"fork server: the template (pid {self.template_pid}) exited with code "
                         f"{self.proc.returncode}; see {self.log_path}")
                self.proc, self.ready = None, False
            if time.monotonic() - self._started_at >= RESTART_EVERY:
                self.start()
            return False
        if not self.ready:
            answer = self._line(wait)
            if answer is not None:
                self.ready = bool(answer.get("ready"))
                if not self.ready:
                    self.log(f"fork server: the template refused: {answer.get('error')}; hosts will be spawned")
                    self.close()
        return self.ready

    def fork(self, module: str, args: list[str], log_path: Path) -> int | None:
        """The pid of a host running `module.main(args)`, forked from the template (this process's child once
        the intermediate process has exited, a moment later); None when it cannot (spawn it instead)."""
        return self.fork_many([(module, args, log_path)])[0]

    def fork_many(self, hosts: list[tuple[str, list[str], Path]]) -> list[int | None]:
        """`fork` for several hosts at once: every request goes out before the first answer is read, so the
        template forks them back to back while the agent waits once, not once per host. None for each host it
        could not fork."""
        if not hosts or not self.check_ready():
            return [None] * len(hosts)
        assert self.proc is not None and self.proc.stdin is not None
        pids: list[int | None] = []
        failed = False  # the template refused one: it is started afresh
        try:
            for module, args, log_path in hosts:
                request = {"module": module, "args": args, "log": str(log_path), "cwd": os.getcwd(),
                           "agent": os.getpid()}
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            for _ in hosts:
                # every answer is read, also after a refusal: the template forks the requests after it, and a
                # host forked but not known here would run beside the one spawned in its place
                answer = self._line(FORK_TIMEOUT)
                if answer is None:
                    self.log(f"fork server: no answer within {FORK_TIMEOUT:g} s; spawning the hosts not forked, "
                             "and starting a new template")
                    break
                if "pid" not in answer:
                    self.log(f"fork server: could not fork a host ({answer.get('error')}); spawning it, and "
                             "starting a new template")
                    failed = True
                pids.append(int(answer["pid"]) if "pid" in answer else None)
        except (OSError, ValueError) as exc:
            self.log(f"fork server: could not ask the template for hosts ({exc}); spawning them")
        if failed or len(pids) < len(hosts):
            self.close()  # answers still to come would be taken for the next requests' answers
        self.forked += sum(pid is not None for pid in pids)
        return pids + [None] * (len(hosts) - len(pids))

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # the template ends at end of input
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        self.proc, self.ready = None, False


# -- the template process ----------------------------------------------------------------------------------

def warm() -> None:
    """What every host needs, loaded once: the modules, and the common kernels from numba's cache (by running
    a small keyed-window job through the local runtime: a filter, then tumbling, sliding and session windows with
    the usual aggregates, on int and string keys; and a small state's transfer rounds)."""
    import cloudpickle  # noqa: F401 - the spec and snapshots travel pickled
    import numpy as np
    import zmq  # noqa: F401 - imported only: a context must be created after the fork

    from .. import agg, windows
    from ..graph.logical import LogicalGraph
    from ..operators.base import OUT
    from ..operators.stateless import Filter, KeyBy
    from ..operators.window import WindowAggregate
    from ..sinks.memory import Collect
    from ..sources.memory import ArraySource
    from . import channels, host, host_main, statexfer  # noqa: F401 - the host's own (channels: 0.3-0.8 s in a host)
    from .local import LocalRuntime

    n = 2000
    cols = {"time": np.arange(n, dtype=np.int64) * 10**7, "sensor": np.arange(n, dtype=np.int64) % 7,
            "name": np.array(["a", "b", "c"])[np.arange(n) % 3], "value": np.linspace(-100.0, 200.0, n)}
    aggs = {"n": agg.count(), "mean": agg.mean("value"), "min": agg.min("value"), "max": agg.max("value"),
            "sum": agg.sum("value")}
    specs = (windows.tumbling("1s"), windows.sliding("2s", "1s"), windows.session("1s"))
    for key in ("sensor", "name"):
        for spec in specs:
            for filtered in (True, False):
                g = LogicalGraph("warm")
                node = g.add(ArraySource(cols, time="time", batch_size=512), [], "source")
                if filtered:
                    node = g.add(Filter(lambda b: b["value"] >= -50.0), [(node.id, OUT)], "filter")
                node = g.add(KeyBy(key), [(node.id, OUT)], "key_by")
                node = g.add(WindowAggregate(spec, aggs), [(node.id, OUT)], "window")
                g.add(Collect(), [(node.id, OUT)], "collect")
                LocalRuntime(g, verbose=False).run()
    statexfer.warm()  # a move's kernels: compiled here on a fresh install, not inside the first move's barrier


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _become_host(request: dict[str, Any]) -> None:
    """In the forked host: look like a fresh process, wait to be adopted by the agent, run the host. Never
    returns."""
    code: Any = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)  # the template's pipes and anything else it held
        os.chdir(request["cwd"])
        import random

        import numpy as np

        random.seed()
        np.random.seed()
        deadline = time.monotonic() + ADOPT_TIMEOUT
        while os.getppid() != request["agent"]:  # the intermediate process is exiting: the agent adopts us
            if time.monotonic() > deadline:
                print(f"forked host: not adopted by agent {request['agent']} (it is gone?)", file=sys.stderr)
                os._exit(1)
            time.sleep(0.0005)
        sys.argv = [request["module"], *request["args"]]
        import importlib

        code = importlib.import_module(request["module"]).main(request["args"])
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends a spawned host
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def _fork_host(request: dict[str, Any]) -> tuple[int, int]:
    """Double-fork a host: (its pid, the intermediate's, which is exiting; the agent adopts the host then)."""
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _become_host(request)
            os.write(w, str(pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 64):
        data += chunk
    os.close(r)
    if not data:
        os.waitpid(middle, 0)
        raise RuntimeError("the intermediate process died before it forked the host")
    return int(data), middle


def serve_template(commands: int, answers: int) -> int:
    """Answer fork requests (one JSON line each) until the agent closes its end."""
    with os.fdopen(commands, "rb") as requests:
        exiting: list[int] = []  # intermediates: tearing down their copy of the template takes tens of ms, so
        for line in requests:    # they are reaped later rather than waited for
            exiting = [pid for pid in exiting if os.waitpid(pid, os.WNOHANG)[0] == 0]
            try:
                pid, middle = _fork_host(json.loads(line))
                exiting.append(middle)
                answer: dict[str, Any] = {"pid": pid}
            except Exception as exc:  # noqa: BLE001 - the agent spawns the host instead
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(answers, json.dumps(answer).encode() + b"\n")
        for pid in exiting:
            os.waitpid(pid, 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="the warm template virtual-node hosts are forked from (an agent "
                                             "starts it)")
    ap.add_argument("--agent", type=int, required=True, help="the agent's pid (it adopts the hosts)")
    ap.parse_args(argv)
    # requests arrive on stdin and answers leave on stdout: move both off fds 0 and 1, so that nothing printed
    # by accident corrupts the protocol (stdout becomes stderr, the template's log)
    commands, answers = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    started = time.perf_counter()
    try:
        warm()
        gc.collect()
        gc.freeze()  # what is loaded now is never collected: collections leave the shared pages alone
        threads = _threads()
        if threads != 1:
            raise RuntimeError(f"the template runs {threads} threads after warming up; a fork keeps only one")
    except Exception as exc:  # noqa: BLE001 - told to the agent, which spawns hosts instead
        traceback.print_exc()
        os.write(answers, json.dumps({"ready": False, "error": f"{type(exc).__name__}: {exc}"}).encode() + b"\n")
        return 1
    print(f"fork server: template {os.getpid()} warm in {time.perf_counter() - started:.2f} s", file=sys.stderr,
          flush=True)
    os.write(answers, json.dumps({"ready": True, "pid": os.getpid()}).encode() + b"\n")
    return serve_template(commands, answers)


if __name__ == "__main__":
    sys.exit(main())
