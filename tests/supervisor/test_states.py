"""The state machine and the restart delays."""

from __future__ import annotations

import random

import pytest

from supervisor.backoff import FlapDetector, backoff_delay
from supervisor.deployment import Replica
from supervisor.errors import InvalidTransition
from supervisor.states import State, can_transition


def test_happy_path_and_crash_loop_transitions() -> None:
    replica = Replica(0, 1)
    for state in (State.STARTING, State.RUNNING, State.BACKOFF, State.STARTING, State.BACKOFF,
                  State.FATAL, State.STARTING, State.STOPPING, State.STOPPED):  # fmt: skip
        replica.transition(state)
    assert replica.state is State.STOPPED


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (State.STOPPED, State.RUNNING),
        (State.RUNNING, State.STARTING),
        (State.STOPPING, State.RUNNING),
    ],
)
def test_illegal_transitions_raise(start: State, target: State) -> None:
    replica = Replica(0, 1)
    replica.state = start
    with pytest.raises(InvalidTransition):
        replica.transition(target)


def test_a_stop_during_backoff_goes_straight_to_stopped() -> None:
    # Nothing runs while a restart waits, so there is nothing to stop first.
    assert can_transition(State.BACKOFF, State.STOPPED)
    replica = Replica(0, 1, state=State.BACKOFF)
    replica.transition(State.STOPPED)
    assert replica.state is State.STOPPED
    # A replica with a live backend must pass through STOPPING.
    for running in (State.STARTING, State.RUNNING):
        assert not can_transition(running, State.STOPPED)
        with pytest.raises(InvalidTransition):
            Replica(0, 1, state=running).transition(State.STOPPED)


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(n, base=0.5, cap=30.0, rng=rng) for n in range(1, 12)]
    assert all(0.125 <= d <= 30.0 for d in delays)
    assert delays[0] <= 0.5 and delays[-1] >= 15.0
    assert len({round(d, 6) for d in delays[-4:]}) > 1  # jitter spreads capped delays


def test_flap_detector_counts_within_its_window() -> None:
    flaps = FlapDetector(max_restarts=2, window_seconds=10)
    assert not flaps.record(0) and not flaps.record(1)
    assert flaps.record(2)
    assert not flaps.record(30)  # the old restarts left the window
