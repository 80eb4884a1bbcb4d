"""The placement contract (supervisor/placement/base.py), one suite for every placement.

Each implementation is a `Subject` factory in IMPLEMENTATIONS: a placement whose
backends run the fake backend's behaviour for `record(key, mode)` (ready | exit |
stubborn), a way to kill a backend from outside, and the placement a restarted
gateway would build. The Ray subject needs the session's test cluster, so it runs
only inside a private network namespace (`make test`'s cluster step).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from supervisor.errors import BackendStartError
from supervisor.manager import Manager, SupervisorConfig
from supervisor.placement.base import BackendHandle, Placement
from supervisor.placement.local import LocalPlacement
from supervisor.process import Command
from supervisor.state_store import DeploymentRecord, StateStore
from tests.cluster.harness import needs_private_netns
from tests.supervisor.fakes import FakePlacement, ping_server
from tests.support import REPO, free_port_range

FAKE = str(REPO / "tests" / "fake_backend.py")
WAIT = 15.0  # bound on every wait in this suite; never asserted as a duration


@dataclass
class Subject:
    """One placement under test and what the contract needs to drive it."""

    placement: Placement
    store: StateStore
    reattaches: bool
    """Whether attach() after a gateway restart finds the backend still running."""
    kill: Callable[[BackendHandle], Awaitable[None]]
    """End a backend from outside, as a crash would."""
    restart: Callable[[], Awaitable[Placement]]
    """The placement a restarted gateway builds on the same state file."""
    record: Callable[[str, str], DeploymentRecord] = field(
        default=lambda key, mode: DeploymentRecord(key, key, "1", options={"mode": mode})
    )


# --------------------------------------------------------------- implementations


async def fake_command(record: DeploymentRecord, port: int, host: str) -> Command:
    return Command([sys.executable, FAKE, str(port), record.options["mode"], host])


@asynccontextmanager
async def local_subject(tmp_path: Path) -> AsyncIterator[Subject]:
    start, end = free_port_range(4)
    store = await StateStore.open(tmp_path / "state.db")
    placements: list[LocalPlacement] = []

    def build() -> LocalPlacement:
        placement = LocalPlacement(store, fake_command, tmp_path / "logs",
                                   port_range=range(start, end + 1), stop_timeout=2.0)  # fmt: skip
        placements.append(placement)
        return placement

    async def kill(handle: BackendHandle) -> None:
        assert handle.pid is not None
        os.killpg(handle.pid, signal.SIGKILL)

    async def restart() -> Placement:
        return build()

    try:
        yield Subject(build(), store, reattaches=False, kill=kill, restart=restart)
    finally:
        for placement in placements:
            await placement.close()
        await store.close()


@asynccontextmanager
async def ray_subject(tmp_path: Path) -> AsyncIterator[Subject]:
    """Detached actors on the session's Ray cluster (tests/cluster/harness.py)."""
    from supervisor.placement.ray import RayHandle, RayPlacement
    from tests.cluster.harness import kill_namespace, shared_cluster
    from tests.cluster.remote import fake_command as on_node

    cluster = shared_cluster()  # the first call starts it: Ray wants the main thread
    store = await StateStore.open(tmp_path / "state.db")
    namespace = f"contract-{tmp_path.name}"
    placements: list[RayPlacement] = []

    def build() -> RayPlacement:
        placement = RayPlacement(on_node, cluster.address, namespace=namespace,
                                 stop_timeout=2.0, schedule_timeout=WAIT)  # fmt: skip
        placements.append(placement)
        return placement

    async def kill(handle: BackendHandle) -> None:
        # The test cluster's nodes are processes of this machine: crash the backend.
        assert isinstance(handle, RayHandle) and handle.child_pid is not None
        os.kill(handle.child_pid, signal.SIGKILL)

    async def restart() -> Placement:
        return build()

    try:
        yield Subject(build(), store, reattaches=True, kill=kill, restart=restart)
    finally:
        for placement in placements:
            await placement.close()
        await asyncio.to_thread(kill_namespace, namespace)
        await store.close()


IMPLEMENTATIONS: list[Callable[[Path], AbstractAsyncContextManager[Subject]]] = [
    local_subject,
    ray_subject,
]
_MARKS = {ray_subject: needs_private_netns}


@pytest.fixture(
    params=[pytest.param(f, marks=_MARKS.get(f, [])) for f in IMPLEMENTATIONS],
    ids=lambda f: f.__name__.removesuffix("_subject"),
)
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    async with request.param(tmp_path) as subject:
        yield subject


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# ----------------------------------------------------------------------- helpers


async def prepare(
    subject: Subject, key: str, replicas: int = 1, mode: str = "ready"
) -> DeploymentRecord:
    """What the manager does before a start: write the rows, then reserve."""
    record = subject.record(key, mode)
    await subject.store.add(record, range(replicas))
    await subject.placement.reserve(record, range(replicas))
    return record


async def answers(http: aiohttp.ClientSession, handle: BackendHandle) -> bool:
    try:
        async with http.get(f"{handle.endpoint}/ping", timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def until_answers(http: aiohttp.ClientSession, handle: BackendHandle) -> None:
    async with asyncio.timeout(WAIT):
        while not await answers(http, handle):
            assert handle.alive, await handle.log_tail()
            await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- contract


async def test_start_returns_a_reachable_endpoint(
    subject: Subject, http: aiohttp.ClientSession
) -> None:
    record = await prepare(subject, "m-1")
    handle = await subject.placement.start(record, 0)
    try:
        assert handle.alive and handle.node and handle.ref
        assert handle.endpoint == f"http://{handle.host}:{handle.port}"
        await until_answers(http, handle)
    finally:
        await handle.stop(2.0)


async def test_wait_exit_returns_when_the_backend_is_killed(
    subject: Subject, http: aiohttp.ClientSession
) -> None:
    record = await prepare(subject, "m-1")
    handle = await subject.placement.start(record, 0)
    await until_answers(http, handle)
    waiting = asyncio.ensure_future(handle.wait_exit())
    await asyncio.sleep(0)
    assert not waiting.done()
    await subject.kill(handle)
    ended = await asyncio.wait_for(waiting, WAIT)
    assert ended != 0 and not handle.alive
    assert await asyncio.wait_for(handle.wait_exit(), WAIT) == ended  # again, after the end


async def test_a_backend_that_fails_at_once_reports_its_exit_and_output(subject: Subject) -> None:
    record = await prepare(subject, "m-1", mode="exit")
    try:
        handle = await subject.placement.start(record, 0)
    except BackendStartError as exc:  # a placement may see the failure during start
        assert "cannot load model" in f"{exc} {exc.log_tail}"
        return
    ended = await asyncio.wait_for(handle.wait_exit(), WAIT)
    assert ended != 0 and not handle.alive
    assert "fatal: cannot load model" in await handle.log_tail()


async def test_stop_with_grace_ends_even_a_stubborn_backend_and_frees_its_place(
    subject: Subject, http: aiohttp.ClientSession
) -> None:
    record = await prepare(subject, "m-1", mode="stubborn")
    handle = await subject.placement.start(record, 0)
    await until_answers(http, handle)
    await asyncio.wait_for(handle.stop(0.5), WAIT)  # it ignores the polite request
    assert not handle.alive and not await answers(http, handle)
    await asyncio.wait_for(handle.wait_exit(), WAIT)
    await asyncio.wait_for(handle.stop(0.5), WAIT)  # idempotent
    # Whatever it held (the local port) is free: the replica starts again.
    again = await subject.placement.start(record, 0)
    try:
        await until_answers(http, again)
    finally:
        await again.stop(2.0)


async def test_log_tail_shows_the_backend_output_also_after_it_ended(
    subject: Subject, http: aiohttp.ClientSession
) -> None:
    record = await prepare(subject, "m-1")
    handle = await subject.placement.start(record, 0)
    await until_answers(http, handle)
    assert "fake backend starting" in await handle.log_tail()
    await handle.stop(2.0)
    tail = await handle.log_tail(lines=1)
    assert "fake backend starting" in tail and len(tail.splitlines()) == 1


async def test_attach_after_a_gateway_restart(
    subject: Subject, http: aiohttp.ClientSession
) -> None:
    record = await prepare(subject, "m-1")
    handle = await subject.placement.start(record, 0)
    await until_answers(http, handle)
    await subject.store.set_backend("m-1", 0, pid=handle.pid, ref=handle.ref, node=handle.node,
                                    endpoint=handle.endpoint)  # fmt: skip

    restarted = await subject.restart()
    [(saved_record, [saved])] = await subject.store.load()
    attached = await restarted.attach(saved_record, 0, saved)
    if subject.reattaches:
        assert attached is not None and attached.endpoint == handle.endpoint
        assert attached.ref == handle.ref and await answers(http, attached)
        await attached.stop(2.0)
    else:
        # Nothing to re-attach to, and nothing left over to hold the old place.
        assert attached is None
        await asyncio.wait_for(handle.wait_exit(), WAIT)
        assert not await answers(http, handle)


async def test_sweep_stops_what_is_not_wanted(
    subject: Subject, http: aiohttp.ClientSession
) -> None:
    first = await prepare(subject, "m-1", replicas=2)
    other = await prepare(subject, "o-1")
    handles = {
        ("m-1", 0): await subject.placement.start(first, 0),
        ("m-1", 1): await subject.placement.start(first, 1),
        ("o-1", 0): await subject.placement.start(other, 0),
    }
    for handle in handles.values():
        await until_answers(http, handle)
    await subject.placement.sweep({("m-1", 0)})
    for slot in (("m-1", 1), ("o-1", 0)):
        await asyncio.wait_for(handles[slot].wait_exit(), WAIT)
    kept = handles[("m-1", 0)]
    assert kept.alive and await answers(http, kept)
    await kept.stop(2.0)


# ------------------------------------------------- backends that outlive the gateway


@pytest.mark.parametrize("outlives", [False, True])
async def test_manager_close_leaves_running_what_outlives_the_gateway(
    tmp_path: Path, outlives: bool
) -> None:
    """A placement whose backends outlive the gateway (Ray) keeps them serving through
    a graceful gateway stop; the state file still names them for the next boot."""
    store = await StateStore.open(tmp_path / "state.db")
    async with ping_server() as port, aiohttp.ClientSession() as session:
        placement = FakePlacement(port)
        placement.outlives_gateway = outlives
        manager = Manager(store, placement, SupervisorConfig(deploy_timeout=WAIT), session)
        await manager.deploy(DeploymentRecord("m-1", "m", "1"), replicas=2)
        started = list(placement.started)
        await manager.close()
    [(_, rows)] = await store.load()
    await store.close()
    assert [h.alive for h in started] == [outlives, outlives]
    assert [h.stops for h in started] == [0 if outlives else 1] * 2
    assert [row.ref for row in rows] == [h.ref for h in started]
