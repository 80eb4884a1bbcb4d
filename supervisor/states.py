"""The life cycle of one backend, after supervisord's process states.

STOPPED -> STARTING -> RUNNING -> (exit or failed probe) -> BACKOFF -> STARTING
STARTING -> BACKOFF (failed start) -> ... -> FATAL after too many failures
any -> STOPPING -> STOPPED; BACKOFF -> STOPPED (nothing runs while a restart waits)

IDLE is a deployment's status, never a replica's: scaled to zero (`Manager.park`),
no backend runs until the next call wakes it.
"""

from __future__ import annotations

import enum


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FATAL = "fatal"
    IDLE = "idle"


# The only allowed moves; anything else is a bug in the supervisor.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING, State.STOPPING}),
    State.STARTING: frozenset({State.RUNNING, State.BACKOFF, State.STOPPING, State.FATAL}),
    State.RUNNING: frozenset({State.BACKOFF, State.STOPPING}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPING, State.STOPPED, State.FATAL}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.FATAL: frozenset({State.STARTING, State.STOPPING}),
    State.IDLE: frozenset(),
}


def can_transition(current: State, new: State) -> bool:
    return new in TRANSITIONS[current]
