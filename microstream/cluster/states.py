"""The states of a job, of a move (migrate, save, restore) and of a virtual node's host, and which
transitions between them are legal: the one place that says so. An illegal transition raises.

    >>> JobState.DEPLOYING.to(JobState.RUNNING)
    <JobState.RUNNING: 'running'>
    >>> JobState.FINISHED.to(JobState.RUNNING)
    Traceback (most recent call last):
    ...
    microstream.cluster.states.IllegalTransition: a job cannot go from finished to running (from finished: nothing)
    >>> [str(s) for s in MoveMode.RESTORE.steps]
    ['preparing', 'resuming', 'done']
"""

from __future__ import annotations

from enum import StrEnum


class IllegalTransition(RuntimeError):
    """A state change the state machine does not allow: a bug in the coordinator, not a user error."""


def _check(what: str, table: dict, current: StrEnum, to: StrEnum) -> None:
    allowed = table[current]
    if to not in allowed:
        options = ", ".join(sorted(str(s) for s in allowed)) or "nothing"
        raise IllegalTransition(f"{what} cannot go from {current} to {to} (from {current}: {options})")


class JobState(StrEnum):
    DEPLOYING = "deploying"    # hosts start and report their endpoints (phase one of the deployment)
    RUNNING = "running"        # everyone has every endpoint and was told to start (phase two)
    RECOVERING = "recovering"  # a host or an agent was lost: every virtual node restarts from the last checkpoint
    ADOPTING = "adopting"      # the coordinator restarted: waiting for the agents to report the job's hosts
    SUSPENDED = "suspended"    # a virtual node was saved to a file; upstream holds its records
    FINISHED = "finished"      # every virtual node ran to its end
    FAILED = "failed"          # a virtual node failed, or an agent running one was lost
    STOPPED = "stopped"        # a client stopped it

    @property
    def active(self) -> bool:
        """Deploying, running, recovering or adopting: an agent lost or a host failed starts a recovery (or ends
        it, once its restarts are spent); a client's stop ends it."""
        return self in (JobState.DEPLOYING, JobState.RUNNING, JobState.RECOVERING, JobState.ADOPTING)

    @property
    def terminal(self) -> bool:
        return not JOB_TRANSITIONS[self]

    def to(self, new: JobState) -> JobState:
        """`new`, if a job in this state may go there; else IllegalTransition."""
        _check("a job", JOB_TRANSITIONS, self, new)
        return new


_ENDS = frozenset({JobState.FAILED, JobState.STOPPED})

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.DEPLOYING: frozenset({JobState.RUNNING, JobState.RECOVERING}) | _ENDS,
    JobState.RUNNING: frozenset({JobState.FINISHED, JobState.SUSPENDED, JobState.RECOVERING}) | _ENDS,
    # another fault while recovering starts the recovery again
    JobState.RECOVERING: frozenset({JobState.RUNNING, JobState.RECOVERING}) | _ENDS,
    # every host reported (running again), or some did not within the grace period (recovering)
    JobState.ADOPTING: frozenset({JobState.RUNNING, JobState.RECOVERING}) | _ENDS,
    # another virtual node saved too, or one restored (or migrated) resumes the job; a client may stop it
    JobState.SUSPENDED: frozenset({JobState.SUSPENDED, JobState.RUNNING}) | _ENDS,
    JobState.FINISHED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.STOPPED: frozenset(),
}


class MoveMode(StrEnum):
    MIGRATE = "migrate"        # to another agent
    SAVE = "save"              # to a file (the client's)
    RESTORE = "restore"        # from a file

    @property
    def steps(self) -> tuple[MoveState, ...]:
        """The states a move of this mode goes through, in order, when nothing goes wrong."""
        return _STEPS[self]


class MoveState(StrEnum):
    PREPARING = "preparing"    # the replacement host starts on the target agent and binds its channel server
    ALIGNING = "aligning"      # the barrier is cut upstream; the virtual node aligns on it and snapshots
    RESUMING = "resuming"      # the replacement restored the snapshot and started; waiting for its first record
    DONE = "done"
    CALLED_OFF = "called_off"  # no progress in time, or the virtual node finished first

    @property
    def terminal(self) -> bool:
        return self in (MoveState.DONE, MoveState.CALLED_OFF)

    def to(self, new: MoveState, mode: MoveMode) -> MoveState:
        """`new`, if a `mode` move in this state may go there; else IllegalTransition."""
        _check(f"a {mode} move", MOVE_TRANSITIONS[mode], self, new)
        return new


_STEPS: dict[MoveMode, tuple[MoveState, ...]] = {
    MoveMode.MIGRATE: (MoveState.PREPARING, MoveState.ALIGNING, MoveState.RESUMING, MoveState.DONE),
    MoveMode.SAVE: (MoveState.ALIGNING, MoveState.DONE),
    MoveMode.RESTORE: (MoveState.PREPARING, MoveState.RESUMING, MoveState.DONE),
}


def _move_table(steps: tuple[MoveState, ...]) -> dict[MoveState, frozenset[MoveState]]:
    """Each step may go to the next one, or be called off; the ends go nowhere."""
    table: dict[MoveState, frozenset[MoveState]] = {state: frozenset() for state in MoveState}
    for here, after in zip(steps, steps[1:], strict=False):
        table[here] = frozenset({after, MoveState.CALLED_OFF})
    return table


MOVE_TRANSITIONS: dict[MoveMode, dict[MoveState, frozenset[MoveState]]] = {
    mode: _move_table(steps) for mode, steps in _STEPS.items()}


class VnodeState(StrEnum):
    """A virtual node's host as its agent sees it (reported in heartbeats and `microstream status`)."""

    STARTING = "starting"      # started, has not reported its endpoint yet
    READY = "ready"            # bound its channel server
    RUNNING = "running"        # reporting stats
    DONE = "done"
    FAILED = "failed"
    MIGRATED = "migrated"      # snapshotted for a move or a save, and gone
    STOPPING = "stopping"      # told to stop; killed if it does not exit in time
    STOPPED = "stopped"

    @property
    def over(self) -> bool:
        """The host has nothing more to say about this run (its counters are final or meaningless)."""
        return self in (VnodeState.MIGRATED, VnodeState.DONE, VnodeState.FAILED)
