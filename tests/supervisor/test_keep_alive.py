"""Supervision on a fake clock: backoff, FATAL, flapping, readiness deadlines and
re-attaching, all without real sleeping and (but for one in-process /ping
server) without backends. The state store is the real SQLite one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from supervisor.deployment import Replica
from supervisor.errors import BackendStartError
from supervisor.manager import Manager, SupervisorConfig
from supervisor.placement.local import LocalPlacement
from supervisor.process import Command
from supervisor.state_store import DeploymentRecord, StateStore
from supervisor.states import State
from tests.supervisor.fakes import Ears, FakeClock, FakeHandle, FakePlacement, ping_server
from tests.support import free_port_range


class Starts:
    """A command factory that fails every start and counts them (no process is spawned)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, record: DeploymentRecord, port: int, host: str) -> Command:
        self.calls += 1
        raise OSError("model artifacts unreadable")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[StateStore]:
    start, end = free_port_range(2)
    store = await StateStore.open(tmp_path / "state.db", range(start, end + 1))
    await store.add(DeploymentRecord("m-1", "m", "1"))
    yield store
    await store.close()


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll in real time: what the tests wait for happens on the event loop."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def restore_and_wait_fatal(manager: Manager) -> None:
    await manager.restore()
    replica = manager.table["m-1"].replicas[0]
    await until(lambda: replica.state is State.FATAL)


async def test_backoff_delays_grow_are_capped_then_fatal(store: StateStore, tmp_path: Path) -> None:
    clock, starts, events = FakeClock(), Starts(), []
    config = SupervisorConfig(max_start_retries=8, backoff_cap=4.0)
    async with aiohttp.ClientSession() as session:
        manager = Manager(store, LocalPlacement(store, starts, tmp_path), config, session,
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
    config = SupervisorConfig(max_start_retries=retries)
    async with aiohttp.ClientSession() as session:
        manager = Manager(store, LocalPlacement(store, starts, tmp_path), config, session,
                          clock=clock)  # fmt: skip
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
    config = SupervisorConfig()
    async with aiohttp.ClientSession() as session:
        placement = LocalPlacement(store, Starts(), tmp_path)
        manager = Manager(store, placement, config, session, clock=clock)
        try:
            await manager.restore()
            replica = manager.table["m-1"].replicas[0]
            await until(lambda: clock.sleeps)
            assert replica.state is State.BACKOFF
            await manager.undeploy("m-1")
            assert replica.state is State.STOPPED
        finally:
            await manager.close()


# ------------------------------------------------------------ a fake placement


class Bench:
    """A manager on a fake clock and a fake placement, over a real state file."""

    def __init__(self, tmp_path: Path, **config: float) -> None:
        self.tmp_path = tmp_path
        self.clock = FakeClock()
        self.events: list[str] = []
        # Health checks tick in real time: an hour keeps them out of the way.
        self.config = SupervisorConfig(**{"health_interval": 3600.0, **config})  # type: ignore[arg-type]

    @property
    def delays(self) -> list[float]:
        return self.clock.sleeps

    async def manager(self, placement: FakePlacement) -> Manager:
        return Manager(self.store, placement, self.config, self.session,
                       listener=lambda e, d, r: self.events.append(e), clock=self.clock)  # fmt: skip

    async def __aenter__(self) -> Bench:
        self.store = await StateStore.open(self.tmp_path / "state.db")
        self.session = aiohttp.ClientSession()
        self.ears = Ears()
        self._server = ping_server(self.ears)
        self.ping_port = await self._server.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._server.__aexit__(None, None, None)
        await self.session.close()
        await self.store.close()


M1 = DeploymentRecord("m-1", "m", "1")


async def test_a_crash_loop_is_flapping_and_waits_the_capped_delay(tmp_path: Path) -> None:
    async with Bench(tmp_path, backoff_cap=30.0, stable_after=60.0) as bench:
        placement = FakePlacement(bench.ping_port, ["crash"] * 7)
        manager = await bench.manager(placement)
        try:
            deployment, _ = await manager.deploy(M1)
            replica = deployment.replicas[0]
            await until(lambda: len(placement.started) == 8 and replica.routable)
        finally:
            await manager.close()
    assert replica.restarts == 7 and bench.events.count("unhealthy") == 7
    # Each crash came right after its start, so the failures add up and the delay grows...
    for delay, ceiling in zip(bench.delays[:5], [0.5, 1.0, 2.0, 4.0, 8.0], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    # ...until the sixth restart within the window: flapping, so the cap, not 8-16 s.
    assert bench.delays[5:] == [30.0, 30.0]


async def test_a_backend_that_ran_for_stable_after_restarts_with_the_base_delay(
    tmp_path: Path,
) -> None:
    async with Bench(tmp_path, stable_after=60.0) as bench:
        placement = FakePlacement(bench.ping_port, ["crash"] * 3)
        manager = await bench.manager(placement)
        try:
            deployment, _ = await manager.deploy(M1)
            replica = deployment.replicas[0]
            await until(lambda: len(placement.started) == 4 and replica.routable)
            assert len(bench.delays) == 3 and bench.delays[2] >= 1.0  # third failure: 1-2 s
            bench.clock.advance(61.0)  # it has now run for longer than stable_after
            placement.started[-1].exit(1)
            await until(lambda: len(placement.started) == 5 and replica.routable)
        finally:
            await manager.close()
    assert 0.25 <= bench.delays[3] <= 0.5  # counted as a first failure again, not a fourth


async def test_the_readiness_deadline_runs_on_the_clock(tmp_path: Path) -> None:
    async with Bench(tmp_path, deploy_timeout=30.0, ready_poll_interval=0.5) as bench:
        placement = FakePlacement(bench.ping_port, ["deaf"])
        manager = await bench.manager(placement)
        try:
            with pytest.raises(BackendStartError, match=r"not ready after 30s") as info:
                await asyncio.wait_for(manager.deploy(M1), 10)
            assert info.value.log_tail == f"output of {placement.started[0].ref}"
            assert manager.table == {} and await bench.store.load() == []
        finally:
            await manager.close()
    assert sum(bench.delays) >= 30.0 and placement.started[0].stops >= 1


async def test_restore_adopts_what_the_placement_still_runs_and_starts_the_rest(
    tmp_path: Path,
) -> None:
    async with Bench(tmp_path) as bench:
        first = FakePlacement(bench.ping_port)
        manager = await bench.manager(first)
        await manager.deploy(M1, replicas=2)
        assert first.reserved == [("m-1", [0, 1])]
        survivor_ref = first.started[0].ref
        await manager.close()  # a gateway stop; the desired state stays

        # The next gateway's placement finds replica 0 still running (as a
        # detached Ray actor would be); replica 1 is gone.
        second = FakePlacement(bench.ping_port)
        survivor = FakeHandle(bench.ping_port, survivor_ref)
        second.survivors[("m-1", 0)] = survivor
        manager = await bench.manager(second)
        try:
            await manager.restore()
            deployment = manager.table["m-1"]
            # Real polling: a deadline on the fake clock would race the real starts.
            await until(lambda: all(r.routable for r in deployment.replicas))
        finally:
            await manager.close()
    assert second.swept == [{("m-1", 0), ("m-1", 1)}]
    saved = {s.replica: s for s in second.attached}
    assert saved[0].ref == survivor_ref and saved[0].node == "fake-node"
    assert saved[0].endpoint == f"http://127.0.0.1:{bench.ping_port}"
    assert deployment.replicas[0].handle is survivor  # adopted, not started
    assert [h.ref for h in second.started] == ["m-1#1/0"]  # only replica 1 started anew
    assert deployment.describe()["replicas"][0]["node"] == "fake-node"


async def test_failed_pings_are_no_misses_while_calls_are_answered_then_a_hang_is(
    tmp_path: Path,
) -> None:
    # A fake handle has no local pid, so answered calls are the only sign of life.
    hung: list[tuple[str, int, str, int]] = []
    placement: FakePlacement

    def on_hung(host: str, port: int, reason: str) -> None:
        hung.append((host, port, reason, placement.started[-1].stops))

    async def answering(replica: Replica, until_set: asyncio.Event) -> None:
        while not until_set.is_set():
            replica.answers += 1
            await asyncio.sleep(0.01)

    async with Bench(tmp_path, health_interval=0.05, health_timeout=0.05, health_failures=2,
                     on_hung=on_hung) as bench:  # type: ignore[arg-type]  # fmt: skip
        placement = FakePlacement(bench.ping_port)
        manager = await bench.manager(placement)
        try:
            deployment, _ = await manager.deploy(M1)
            replica = deployment.replicas[0]
            done = asyncio.Event()
            calls = asyncio.create_task(answering(replica, done))
            bench.ears.deaf = True
            await until(lambda: bench.ears.unanswered >= 10)  # ten ticks, no ping answered
            assert hung == [] and replica.restarts == 0 and replica.routable
            done.set()
            await calls
            await until(lambda: hung)
            [(host, port, reason, stops)] = hung
            assert (host, port) == (replica.host, replica.port)
            assert "missed 2 health checks" in reason
            assert stops == 0  # its calls were failed before it was stopped
            assert placement.started[0].graces == [bench.config.hung_stop_timeout]
            bench.ears.deaf = False
            await until(lambda: replica.routable and replica.restarts == 1)
        finally:
            await manager.close()
