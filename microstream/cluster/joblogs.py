"""What jobs printed: the coordinator's part of forwarding user output (`runtime/output.py` is the host's).

Agents pass on what their hosts' user code printed (`vnode_output`). The coordinator sends each batch of lines to
the job's watchers at once (the client that submitted it and waits, `microstream logs JOB --follow`) and keeps the
last `keep_lines` lines of the last `keep_jobs` jobs for `microstream logs JOB` after the fact (in memory: a
restarted coordinator has only what was printed since; every line is in the host's log file on its agent).

No sockets here: the coordinator hands in decoded messages and a `send(identity, message, quiet)`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .messages import Error, JobLogsReply, JobOutput, LogsRequest, VnodeOutput

KEEP_LINES = 2000   # per job
KEEP_JOBS = 50      # jobs whose lines are kept (the oldest go first)


@dataclass
class _Log:
    lines: deque[list[str]]
    received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


class JobLogs:
    def __init__(self, send: Callable[..., None], agent_name: Callable[[bytes], str | None], jobs: Any,
                 keep_lines: int = KEEP_LINES, keep_jobs: int = KEEP_JOBS) -> None:
        self.send = send
        self.agent_name = agent_name
        self.jobs = jobs                     # the JobLifecycle: live jobs (their watchers) and ended ones
        self.keep_lines, self.keep_jobs = keep_lines, keep_jobs
        self._logs: dict[str, _Log] = {}

    def _log(self, job: str) -> _Log:
        log = self._logs.pop(job, None) or _Log(deque(maxlen=self.keep_lines))
        self._logs[job] = log  # most recently written last
        while len(self._logs) > self.keep_jobs:
            del self._logs[next(iter(self._logs))]
        return log

    def output(self, identity: bytes, m: VnodeOutput) -> None:
        """Lines from `m.vnode`'s host, through the agent at `identity`: kept, and sent to the job's watchers."""
        self.output_as(self.agent_name(identity) or "?", m)

    def output_as(self, agent: str, m: VnodeOutput) -> None:
        log = self._log(m.job)
        log.lines.extend([m.vnode, agent, stream, text] for stream, text in m.lines)
        log.received += len(m.lines)
        if m.dropped:
            log.dropped[m.vnode] = log.dropped.get(m.vnode, 0) + m.dropped
        job = self.jobs.get(m.job)
        for watcher in (job.watchers if job is not None else ()):
            self.send(watcher, JobOutput(job=m.job, vnode=m.vnode, agent=agent, lines=m.lines, dropped=m.dropped),
                      quiet=True)

    def note(self, job_id: str, text: str) -> None:
        """A line from the coordinator about the job (it stalled, it moves again): kept and sent like output."""
        self.output_as("coordinator", VnodeOutput(job=job_id, vnode="job", lines=[["stderr", text]]))

    def request(self, identity: bytes, m: LogsRequest) -> None:
        """The lines kept for `m.job`; with `follow`, the client also becomes one of its watchers."""
        job = self.jobs.get(m.job)
        log = self._logs.get(m.job)
        if job is None and log is None and self.jobs.ended(m.job) is None:
            self.send(identity, Error(error=f"no job '{m.job}' (see `microstream status`)"))
            return
        if m.follow and job is not None:
            job.watchers.add(identity)
        if log is None:
            log = _Log(deque())
        self.send(identity, JobLogsReply(job=m.job, lines=list(log.lines), received=log.received,
                                         dropped=dict(log.dropped)))
