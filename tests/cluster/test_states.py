"""Job and move state machines: every legal transition is allowed, every other one raises."""

from __future__ import annotations

import itertools

import pytest

from microstream.cluster.states import (
    JOB_TRANSITIONS,
    MOVE_TRANSITIONS,
    IllegalTransition,
    JobState,
    MoveMode,
    MoveState,
    VnodeState,
)

J, M = JobState, MoveState

LEGAL_JOB = {
    (J.DEPLOYING, J.RUNNING), (J.DEPLOYING, J.FAILED), (J.DEPLOYING, J.STOPPED), (J.DEPLOYING, J.RECOVERING),
    (J.RUNNING, J.FINISHED), (J.RUNNING, J.SUSPENDED), (J.RUNNING, J.FAILED), (J.RUNNING, J.STOPPED),
    (J.RUNNING, J.RECOVERING),
    (J.RECOVERING, J.RUNNING), (J.RECOVERING, J.RECOVERING), (J.RECOVERING, J.FAILED), (J.RECOVERING, J.STOPPED),
    (J.ADOPTING, J.RUNNING), (J.ADOPTING, J.RECOVERING), (J.ADOPTING, J.FAILED), (J.ADOPTING, J.STOPPED),
    (J.SUSPENDED, J.SUSPENDED), (J.SUSPENDED, J.RUNNING), (J.SUSPENDED, J.FAILED), (J.SUSPENDED, J.STOPPED),
}


@pytest.mark.parametrize("here, there", list(itertools.product(JobState, JobState)), ids=str)
def test_job_transitions(here, there):
    if (here, there) in LEGAL_JOB:
        assert here.to(there) is there
    else:
        with pytest.raises(IllegalTransition, match=f"a job cannot go from {here} to {there}"):
            here.to(there)


def test_job_state_properties():
    assert {s for s in JobState if s.terminal} == {J.FINISHED, J.FAILED, J.STOPPED}
    assert {s for s in JobState if s.active} == {J.DEPLOYING, J.RUNNING, J.RECOVERING, J.ADOPTING}
    assert set(JOB_TRANSITIONS) == set(JobState)


def test_states_are_their_wire_strings():
    """Status, Prometheus labels and heartbeats carry them as plain strings."""
    assert JobState.RUNNING == "running" and f"{JobState.SUSPENDED}" == "suspended"
    assert MoveMode.SAVE == "save" and VnodeState.MIGRATED == "migrated"


LEGAL_MOVE = {
    MoveMode.MIGRATE: {(M.PREPARING, M.ALIGNING), (M.ALIGNING, M.RESUMING), (M.RESUMING, M.DONE)},
    MoveMode.SAVE: {(M.ALIGNING, M.DONE)},
    MoveMode.RESTORE: {(M.PREPARING, M.RESUMING), (M.RESUMING, M.DONE)},
}


@pytest.mark.parametrize("mode", list(MoveMode), ids=str)
def test_move_transitions(mode):
    steps = mode.steps
    legal = LEGAL_MOVE[mode] | {(s, M.CALLED_OFF) for s in steps if not s.terminal}
    for here, there in itertools.product(MoveState, MoveState):
        if (here, there) in legal:
            assert here.to(there, mode) is there
        else:
            with pytest.raises(IllegalTransition, match=f"a {mode} move cannot go from {here} to {there}"):
                here.to(there, mode)
    assert set(MOVE_TRANSITIONS[mode]) == set(MoveState)


def test_move_paths():
    assert MoveMode.MIGRATE.steps == (M.PREPARING, M.ALIGNING, M.RESUMING, M.DONE)
    assert MoveMode.SAVE.steps == (M.ALIGNING, M.DONE)
    assert MoveMode.RESTORE.steps == (M.PREPARING, M.RESUMING, M.DONE)
    assert {s for s in MoveState if s.terminal} == {M.DONE, M.CALLED_OFF}


def test_the_error_lists_what_is_allowed():
    with pytest.raises(IllegalTransition, match=r"from preparing: aligning, called_off"):
        M.PREPARING.to(M.DONE, MoveMode.MIGRATE)
