"""The manager with the local placement and a fake backend script: start, crash,
failed start, restore, scale, replace, wait_ready, set_options."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from supervisor.errors import BackendStartError, NotDeployed
from supervisor.keep_alive import Keeper
from supervisor.manager import Manager, SupervisorConfig
from supervisor.placement.local import CommandFactory, LocalPlacement
from supervisor.process import Command
from supervisor.state_store import DeploymentRecord, StateStore
from supervisor.states import State
from tests.support import REPO, free_port_range, pid_alive, processes_mentioning

FAKE = str(REPO / "tests" / "fake_backend.py")


def record(key: str, mode: str = "ready") -> DeploymentRecord:
    name, _, version = key.rpartition("-")
    return DeploymentRecord(key=key, model_name=name, version=version, options={"mode": mode})


async def fake_command(rec: DeploymentRecord, port: int, host: str) -> Command:
    return Command([sys.executable, FAKE, str(port), rec.options["mode"], host])


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        start, end = free_port_range(3)
        self.port_range = range(start, end + 1)
        self.events: list[tuple[str, str]] = []
        self.factory: CommandFactory = fake_command
        self.config = SupervisorConfig(
            deploy_timeout=5, stop_timeout=2, health_interval=0.2, health_timeout=0.5,
            health_failures=2, max_start_retries=3,
        )  # fmt: skip

    async def open(self) -> Manager:
        self.store = await StateStore.open(self.tmp_path / "state.db")
        self.session = aiohttp.ClientSession()
        self.placement = LocalPlacement(
            self.store, self.factory, self.tmp_path / "logs", port_range=self.port_range,
            stop_timeout=self.config.stop_timeout,
        )  # fmt: skip
        return Manager(
            self.store, self.placement, self.config, self.session,
            listener=lambda event, d, r: self.events.append((event, d.key)),
        )  # fmt: skip

    async def free_ports(self) -> int:
        return await self.placement.count_free_ports()

    async def close(self, manager: Manager) -> None:
        await manager.close()
        await self.placement.close()
        await self.session.close()
        await self.store.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    yield Harness(tmp_path)


async def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_deploy_crash_restart_and_undeploy(harness: Harness) -> None:
    manager = await harness.open()
    try:
        deployment, created = await manager.deploy(record("m-1"))
        assert created
        again, created_again = await manager.deploy(record("m-1"))
        assert again is deployment and not created_again
        replica = deployment.replicas[0]
        assert replica.state is State.RUNNING and replica.routable
        first_pid = replica.pid
        assert first_pid is not None
        view = deployment.describe()["replicas"][0]
        assert view["pid"] == first_pid and view["node"] == "local"
        assert view["endpoint"] == f"http://127.0.0.1:{replica.port}" == replica.base_url

        os.kill(first_pid, signal.SIGKILL)
        await wait_for(lambda: replica.restarts == 1 and replica.routable)
        assert replica.pid is not None and replica.pid != first_pid
        assert ("unhealthy", "m-1") in harness.events and ("restarted", "m-1") in harness.events

        await manager.undeploy("m-1")
        assert replica.state is State.STOPPED
        assert replica.handle is not None and not pid_alive(replica.handle.pid or 0)
        assert await harness.free_ports() == len(harness.port_range)
        with pytest.raises(NotDeployed):
            await manager.undeploy("m-1")
    finally:
        await harness.close(manager)


@pytest.mark.parametrize(
    ("mode", "message"), [("exit", "exited with code 3"), ("never-ready", "not ready after")]
)
async def test_failed_start_reports_output_and_leaves_nothing(
    harness: Harness, mode: str, message: str
) -> None:
    harness.config = dataclasses.replace(harness.config, deploy_timeout=1.0)
    manager = await harness.open()
    try:
        with pytest.raises(BackendStartError) as info:
            await manager.deploy(record("m-1", mode))
        assert message in str(info.value)
        assert "fake backend starting" in info.value.log_tail
        assert manager.table == {}
        assert await harness.store.load() == []
        assert await harness.free_ports() == len(harness.port_range)
        assert not processes_mentioning(f"{FAKE} {harness.port_range.start}")
    finally:
        await harness.close(manager)


async def test_close_keeps_desired_state_and_restore_brings_it_back(harness: Harness) -> None:
    manager = await harness.open()
    deployment, _ = await manager.deploy(record("m-1"))
    port, pid = deployment.replicas[0].port, deployment.replicas[0].pid
    assert pid is not None
    await harness.close(manager)
    assert not pid_alive(pid)

    manager = await harness.open()
    try:
        await manager.restore()
        restored = manager.table["m-1"]
        assert restored.replicas[0].port == port
        await wait_for(lambda: restored.pick() is not None)
    finally:
        await harness.close(manager)


async def test_a_dead_replica_leaves_the_rotation_and_comes_back(harness: Harness) -> None:
    manager = await harness.open()
    try:
        deployment, _ = await manager.deploy(record("m-1"), replicas=2)
        first, second = deployment.replicas
        assert first.port != second.port and first.routable and second.routable
        os.kill(first.pid or 0, signal.SIGKILL)
        await wait_for(lambda: not first.routable)
        assert {deployment.pick() for _ in range(5)} == {second}
        await wait_for(lambda: first.routable and first.restarts == 1)
        second.in_flight = 3  # busier: the least-outstanding choice is now the first
        assert deployment.pick() is first
        second.in_flight = 0
    finally:
        await harness.close(manager)


async def test_scale_and_replace_swap_replicas_and_free_ports(harness: Harness) -> None:
    manager = await harness.open()
    try:
        deployment, _ = await manager.deploy(record("m-1"))
        await manager.scale("m-1", 3)
        assert len(deployment.replicas) == 3 and all(r.routable for r in deployment.replicas)
        assert await harness.free_ports() == 0
        dropped = deployment.replicas[1:]
        await manager.scale("m-1", 1)
        assert len(deployment.replicas) == 1
        assert all(r.handle and not pid_alive(r.handle.pid or 0) for r in dropped)
        assert await harness.free_ports() == 2

        old = deployment.replicas[0]
        await manager.replace(record("m-1"), 2)
        assert old not in deployment.replicas and old.handle and not pid_alive(old.handle.pid or 0)
        assert len(deployment.replicas) == 2 and all(r.routable for r in deployment.replicas)
        [(_, rows)] = await harness.store.load()
        assert sorted(b.port for b in rows) == sorted(r.port for r in deployment.replicas)
    finally:
        await harness.close(manager)


async def test_a_failed_replace_keeps_the_old_backends(harness: Harness) -> None:
    manager = await harness.open()
    try:
        deployment, _ = await manager.deploy(record("m-1"))
        old = deployment.replicas[0]
        with pytest.raises(BackendStartError):
            await manager.replace(record("m-1", mode="exit"), 1)
        assert deployment.replicas == [old] and old.routable
        assert deployment.record.options["mode"] == "ready"
        assert await harness.free_ports() == len(harness.port_range) - 1
    finally:
        await harness.close(manager)


# --------------------------------------------- a start that fails in any way


async def test_a_command_factory_that_raises_fails_the_deploy_with_its_reason(
    harness: Harness,
) -> None:
    async def broken(rec: DeploymentRecord, port: int, host: str) -> Command:
        raise RuntimeError("the registry is unreachable")

    harness.factory = broken
    manager = await harness.open()
    try:
        with pytest.raises(BackendStartError) as info:
            await asyncio.wait_for(manager.deploy(record("m-1")), 10)
        assert "could not build the backend command" in str(info.value)
        assert "RuntimeError: the registry is unreachable" in str(info.value)
        assert manager.table == {}
        assert await harness.store.load() == []
    finally:
        await harness.close(manager)


async def test_a_hanging_command_factory_is_bounded_by_the_deploy_timeout(
    harness: Harness,
) -> None:
    async def stuck(rec: DeploymentRecord, port: int, host: str) -> Command:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    harness.factory = stuck
    harness.config = dataclasses.replace(harness.config, deploy_timeout=0.5)
    manager = await harness.open()
    try:
        with pytest.raises(BackendStartError, match=r"did not start within 0\.5s"):
            await asyncio.wait_for(manager.deploy(record("m-1")), 10)
        assert manager.table == {}
    finally:
        await harness.close(manager)


async def test_a_restored_deployment_whose_factory_raises_goes_fatal(harness: Harness) -> None:
    manager = await harness.open()
    await manager.deploy(record("m-1"))
    await harness.close(manager)

    async def broken(rec: DeploymentRecord, port: int, host: str) -> Command:
        raise OSError("disk full")

    harness.factory = broken
    harness.config = dataclasses.replace(harness.config, max_start_retries=2, backoff_cap=0.05)
    manager = await harness.open()
    try:
        await manager.restore()
        replica = manager.table["m-1"].replicas[0]
        await wait_for(lambda: replica.state is State.FATAL)
        assert replica.last_error is not None and "OSError: disk full" in replica.last_error
        assert ("fatal", "m-1") in harness.events
    finally:
        await harness.close(manager)


async def test_a_supervision_bug_before_the_first_start_still_answers_the_deploy(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_detector(*args: object, **kwargs: object) -> None:
        raise RuntimeError("bug in supervision")

    monkeypatch.setattr("supervisor.keep_alive.FlapDetector", broken_detector)
    manager = await harness.open()
    try:
        with pytest.raises(BackendStartError, match="bug in supervision"):
            await asyncio.wait_for(manager.deploy(record("m-1")), 10)
        assert manager.table == {}
    finally:
        await harness.close(manager)


async def test_a_supervision_task_that_dies_is_logged_and_visible(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_watch(*args: object) -> str:
        raise RuntimeError("bug while watching")

    monkeypatch.setattr(Keeper, "_watch", broken_watch)
    manager = await harness.open()
    try:
        deployment, _ = await manager.deploy(record("m-1"))
        replica = deployment.replicas[0]
        await wait_for(lambda: replica.state is State.FATAL)
        assert not replica.routable
        assert "RuntimeError: bug while watching" in (replica.last_error or "")
        assert ("fatal", "m-1") in harness.events
        errors = [r for r in caplog.records if r.levelname == "ERROR" and r.exc_info]
        assert any("bug while watching" in str(r.exc_info[1]) for r in errors if r.exc_info)
    finally:
        await harness.close(manager)


async def test_a_listener_that_raises_does_not_stop_supervision(harness: Harness) -> None:
    def listener(event: str, d: object, r: object) -> None:
        raise RuntimeError("listener bug")

    manager = await harness.open()
    manager._listener = listener
    try:
        deployment, _ = await manager.deploy(record("m-1"))
        replica = deployment.replicas[0]
        os.kill(replica.pid or 0, signal.SIGKILL)
        await wait_for(lambda: replica.restarts == 1 and replica.routable)
    finally:
        await harness.close(manager)


# ------------------------------------------------- wait_ready and set_options


async def test_wait_ready_waits_for_a_restored_deployment(harness: Harness) -> None:
    manager = await harness.open()
    await manager.deploy(record("m-1"), replicas=2)
    await harness.close(manager)

    manager = await harness.open()
    try:
        await manager.restore()
        deployment = await asyncio.wait_for(manager.wait_ready("m-1", 10), 15)
        assert deployment is manager.table["m-1"]
        assert len(deployment.replicas) == 2 and all(r.routable for r in deployment.replicas)
        with pytest.raises(NotDeployed):
            await manager.wait_ready("m-2", 1)
    finally:
        await harness.close(manager)


async def test_wait_ready_reports_a_fatal_replica_with_its_output(harness: Harness) -> None:
    manager = await harness.open()
    await manager.deploy(record("m-1"))
    await manager.set_options("m-1", {"mode": "exit"})  # the next start fails
    await harness.close(manager)

    harness.config = dataclasses.replace(harness.config, max_start_retries=1, backoff_cap=0.05)
    manager = await harness.open()
    try:
        await manager.restore()
        with pytest.raises(BackendStartError) as info:
            await asyncio.wait_for(manager.wait_ready("m-1", 10), 15)
        assert "#0" in str(info.value) and "exited with code 3" in str(info.value)
        assert "fatal: cannot load model" in info.value.log_tail
    finally:
        await harness.close(manager)


async def test_wait_ready_times_out_naming_each_replica_state(harness: Harness) -> None:
    manager = await harness.open()
    await manager.deploy(record("m-1"))
    await manager.set_options("m-1", {"mode": "never-ready"})
    await harness.close(manager)

    manager = await harness.open()
    try:
        await manager.restore()
        with pytest.raises(BackendStartError, match=r"not ready after 0\.3s.*#0 starting"):
            await asyncio.wait_for(manager.wait_ready("m-1", 0.3), 10)
    finally:
        await harness.close(manager)


async def test_set_options_merges_persists_and_waits_for_the_key_lock(harness: Harness) -> None:
    manager = await harness.open()
    try:
        deployment, _ = await manager.deploy(record("m-1"))
        before = deployment.record
        await manager.set_options("m-1", {"max_batch_size": 8})
        assert deployment.record.options == {"mode": "ready", "max_batch_size": 8}
        assert before.options == {"mode": "ready"}  # readers of the old record see no change
        # set_options queues behind a replace on the same key, so neither loses the other.
        await asyncio.gather(
            manager.replace(record("m-1"), 1), manager.set_options("m-1", {"max_batch_size": 4})
        )
        assert deployment.record.options == {"mode": "ready", "max_batch_size": 4}
        [(saved, _)] = await harness.store.load()
        assert saved.options == {"mode": "ready", "max_batch_size": 4}
        with pytest.raises(NotDeployed):
            await manager.set_options("m-2", {"max_batch_size": 2})
    finally:
        await harness.close(manager)


async def test_a_wake_does_not_wait_for_the_parked_backends_to_exit(harness: Harness) -> None:
    """A call to a deployment that was just parked gets new backends at once: the old
    ones (here one that ignores SIGTERM, so its stop takes the whole grace) stop aside."""
    manager = await harness.open()
    try:
        deployment, _ = await manager.deploy(record("m-1", "stubborn"))
        old = deployment.replicas[0]
        old_pid = old.pid
        park = asyncio.create_task(manager.park("m-1"))
        await wait_for(lambda: not deployment.replicas)
        woken = await manager.wake("m-1")
        assert not park.done(), "the wake waited for the parked backend's stop"
        [new] = woken.replicas
        assert new.index == old.index + 1 and new.routable and new.pid != old_pid
        await park
        assert old_pid is not None and not pid_alive(old_pid)
        assert [r.index for r in deployment.replicas] == [new.index]
        [(_, rows)] = await harness.store.load()
        assert [row.replica for row in rows] == [new.index]
    finally:
        await harness.close(manager)
