"""Backoff, FATAL and readiness deadlines on a fake clock: no real sleeping.

The command factory raises, so no process is ever spawned; the state store is
the real SQLite one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from supervisor.manager import Manager, SupervisorConfig
from supervisor.process import Command
from supervisor.state_store import DeploymentRecord, StateStore
from supervisor.states import State
from tests.supervisor.fakes import FakeClock
from tests.support import free_port_range


class Starts:
    """A command factory that fails every start and counts them."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, record: DeploymentRecord, port: int) -> Command:
        self.calls += 1
        raise OSError("model artifacts unreadable")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    start, end = free_port_range(2)
    store = await StateStore.open(tmp_path / "state.db", range(start, end + 1))
    await store.reserve(DeploymentRecord("m-1", "m", "1"))
    yield store
    await store.close()


async def restore_and_wait_fatal(manager: Manager) -> None:
    await manager.restore()
    replica = manager.table["m-1"].replicas[0]
    async with asyncio.timeout(10):
        while replica.state is not State.FATAL:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_backoff_delays_grow_are_capped_then_fatal(store: StateStore, tmp_path: Path) -> None:
    clock, starts, events = FakeClock(), Starts(), []
    config = SupervisorConfig(log_dir=tmp_path, max_start_retries=8, backoff_cap=4.0)
    async with aiohttp.ClientSession() as session:
        manager = Manager(store, starts, config, session,
                          listener=lambda e, d, r: events.append(e), clock=clock)  # fmt: skip
        try:
            await restore_and_wait_fatal(manager)
            replica = manager.table["m-1"].replicas[0]
        finally:
            await manager.close()
    # The first start and exactly max_start_retries restarts, one delay before each restart.
    assert starts.calls == 1 + 8
    assert len(clock.sleeps) == 8
    ceilings = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, ceiling in zip(clock.sleeps, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert (
        replica.last_error is not None
        and "OSError: model artifacts unreadable" in replica.last_error
    )
    assert events.count("fatal") == 1


@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_fatal_comes_exactly_after_max_start_retries(
    store: StateStore, tmp_path: Path, retries: int
) -> None:
    clock, starts = FakeClock(), Starts()
    config = SupervisorConfig(log_dir=tmp_path, max_start_retries=retries)
    async with aiohttp.ClientSession() as session:
        manager = Manager(store, starts, config, session, clock=clock)
        try:
            await restore_and_wait_fatal(manager)
            await asyncio.sleep(0.05)  # no further start sneaks in after FATAL
        finally:
            await manager.close()
    assert starts.calls == 1 + retries and len(clock.sleeps) == retries


async def test_an_undeploy_during_backoff_goes_straight_to_stopped(
    store: StateStore, tmp_path: Path
) -> None:
    class Blocking(FakeClock):
        """A clock whose sleeps never end: the replica stays in BACKOFF."""

        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            await asyncio.Event().wait()

    clock = Blocking()
    config = SupervisorConfig(log_dir=tmp_path)
    async with aiohttp.ClientSession() as session:
        manager = Manager(store, Starts(), config, session, clock=clock)
        try:
            await manager.restore()
            replica = manager.table["m-1"].replicas[0]
            async with asyncio.timeout(10):
                while not clock.sleeps:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert replica.state is State.BACKOFF
            await manager.undeploy("m-1")
            assert replica.state is State.STOPPED
        finally:
            await manager.close()
