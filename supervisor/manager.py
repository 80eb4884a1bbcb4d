"""Keeps every deployment's backends served: deploy, scale, replace, undeploy, restore.

The manager owns the desired state (written through the state store) and the
routing table the proxy reads; `Keeper` runs each replica's owner task, and a
placement (`supervisor/placement/`) decides where backends run. The table is
replaced key by key, never mutated while a request reads a deployment's list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import aiohttp

from supervisor.clock import Clock, SystemClock
from supervisor.config import EventListener, SupervisorConfig
from supervisor.deployment import Deployment, Replica
from supervisor.errors import BackendStartError, NotDeployed
from supervisor.keep_alive import Keeper
from supervisor.placement.base import BackendHandle, Placement
from supervisor.state_store import DeploymentRecord, SavedBackend, StateStore
from supervisor.states import State

__all__ = [
    "PARKED_REPLICAS",
    "EventListener",
    "Manager",
    "SupervisorConfig",
    "is_idle",
]

logger = logging.getLogger(__name__)

# The option an idle deployment keeps its replica count in, to wake with as many.
PARKED_REPLICAS = "parked_replicas"


def is_idle(deployment: Deployment) -> bool:
    """Whether `deployment` was scaled to zero (`Manager.park`) and not woken yet."""
    return not deployment.replicas and PARKED_REPLICAS in deployment.record.options


class Manager:
    """Owns every backend of the gateway, wherever a placement runs it."""

    def __init__(
        self,
        store: StateStore,
        placement: Placement,
        config: SupervisorConfig,
        probe_session: aiohttp.ClientSession,
        listener: EventListener | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self.placement = placement
        self.config = config
        self._listener = listener
        self._clock: Clock = clock or SystemClock()
        self._keeper = Keeper(placement, store, config, probe_session, self._clock, self._emit)
        self._locks: dict[str, asyncio.Lock] = {}
        # Replicas a park is stopping, by key (out of the table, not yet gone).
        self._retiring: dict[str, list[Replica]] = {}
        self.table: dict[str, Deployment] = {}

    # ------------------------------------------------------------------ public

    async def restore(self) -> None:
        """Bring back every deployment recorded in SQLite (the desired state).

        Backends the placement still runs are re-attached, the rest started;
        anything it runs that is no longer wanted is swept. Returns at once:
        backends come up in the background and answer 503 `model_not_ready`
        until their first probe passes.
        """
        loaded = await self._store.load()
        wanted = {(record.key, saved.replica) for record, rows in loaded for saved in rows}
        await self.placement.sweep(wanted)
        for record, rows in loaded:
            deployment = Deployment(record, [Replica(s.replica, s.port or 0) for s in rows])
            self.table[record.key] = deployment
            for replica, saved in zip(deployment.replicas, rows, strict=True):
                attached = await self._attach(record, saved.replica, saved)
                if attached is not None:
                    replica.bind(attached)
                self._keeper.supervise(deployment, replica, None, attached)
            logger.info("restoring deployment %s (%d replica(s))", record.key, len(rows))

    async def deploy(self, record: DeploymentRecord, replicas: int = 1) -> tuple[Deployment, bool]:
        """Serve `record`; returns (deployment, created). Idempotent per key.

        Raises NoFreePort, or BackendStartError after cleaning up: no backend
        left running and nothing left reserved.
        """
        async with self._lock(record.key):
            existing = self.table.get(record.key)
            if existing is not None:
                return existing, False
            started = self._clock.now()
            indexes = list(range(replicas))
            await self._store.add(record, indexes)
            deployment = Deployment(record, [Replica(i, 0) for i in indexes])
            try:
                await self.placement.reserve(record, indexes)
                self.table[record.key] = deployment
                await self._launch(deployment, deployment.replicas)
            except BaseException:
                self.table.pop(record.key, None)
                await self._stop_all(deployment)
                await self._store.remove(record.key)
                raise
            logger.info("deployed %s at %s in %.1fs", record.key,
                        [r.base_url for r in deployment.replicas],
                        self._clock.now() - started)  # fmt: skip
            return deployment, True

    async def scale(self, key: str, replicas: int) -> Deployment:
        """Change the replica count live: new replicas join the rotation once ready,
        removed ones leave it first and are drained before they stop."""
        async with self._lock(key):
            deployment = self._get(key)
            current = list(deployment.replicas)
            if replicas > len(current):
                added = await self._start_replicas(deployment, replicas - len(current))
                deployment.replicas = [*current, *added]  # one assignment: readers see old or new
            elif replicas < len(current):
                kept, dropped = current[:replicas], current[replicas:]
                deployment.replicas = kept
                await self._retire(deployment, dropped)
            logger.info("scaled %s to %d replica(s)", key, replicas)
            return deployment

    async def replace(self, record: DeploymentRecord, replicas: int) -> Deployment:
        """Zero-downtime redeploy: start new backends, wait until they are ready,
        switch routing in one assignment, then drain and stop the old ones.

        If the new backends fail to start, the old ones keep serving untouched.
        """
        async with self._lock(record.key):
            deployment = self._get(record.key)
            # The new replicas start under a staging deployment that carries the new
            # record, so their command (and later restarts) use it.
            staging = Deployment(record, [])
            added = await self._start_replicas(staging, replicas, deployment.replicas)
            old = deployment.replicas
            deployment.record = record
            deployment.replicas = added
            await self._store.update_record(record)
            await self._retire(deployment, old)
            logger.info("replaced %s: %s -> %s", record.key,
                        [r.base_url for r in old], [r.base_url for r in added])  # fmt: skip
            return deployment

    async def undeploy(self, key: str) -> Deployment:
        """Stop every backend of `key`, free what it held and forget it."""
        async with self._lock(key):
            deployment = self.table.pop(key, None)
            if deployment is None:
                raise NotDeployed(f"{key!r} is not deployed")
            await self._drain(deployment.replicas)
            await self._stop_all(deployment)
            await self._store.remove(key)
            logger.info("undeployed %s", key)
            return deployment

    async def wait_ready(self, key: str, timeout: float) -> Deployment:
        """Return once every replica of `key` is running and healthy.

        A key restored after a gateway restart is deployed but may still be
        starting; a deploy call for it waits here as a first deploy would.
        Raises NotDeployed, or BackendStartError when a replica is fatal or
        `timeout` passes first.
        """
        deadline = self._clock.now() + timeout
        while True:
            deployment = self._get(key)  # re-read: an undeploy ends the wait
            replicas = list(deployment.replicas)
            if all(r.routable for r in replicas):
                return deployment
            fatal = [r for r in replicas if r.state is State.FATAL]
            if fatal:
                reasons = "; ".join(f"#{r.index}: {_first_line(r.last_error)}" for r in fatal)
                raise BackendStartError(f"{key} cannot start: {reasons}", await _log_tail(fatal[0]))
            if self._clock.now() >= deadline:
                states = ", ".join(f"#{r.index} {_state_of(r)}" for r in replicas)
                laggard = next(r for r in replicas if not r.routable)
                raise BackendStartError(
                    f"{key} was not ready after {timeout:g}s: {states}", await _log_tail(laggard)
                )
            await self._clock.sleep(self.config.ready_poll_interval)

    async def set_options(self, key: str, options: dict[str, Any]) -> Deployment:
        """Merge `options` into the deployment's record and persist them.

        Under the key's lock, so a concurrent replace or scale never loses them;
        the record is replaced, never mutated, so a reader sees old or new.
        """
        async with self._lock(key):
            deployment = self._get(key)
            record = dataclasses.replace(
                deployment.record, options={**deployment.record.options, **options}
            )
            await self._store.update_record(record)
            deployment.record = record
            logger.info("set options of %s: %s", key, options)
            return deployment

    async def park(self, key: str) -> Deployment:
        """Scale `key` to zero: drain and stop every backend, free its ports, and keep
        the deployment (desired state included) with the count to wake it with.

        An idle deployment has no replicas, so a restore starts nothing for it.
        """
        async with self._lock(key):
            deployment = self._get(key)
            replicas = list(deployment.replicas)
            if not replicas:
                return deployment
            record = dataclasses.replace(
                deployment.record,
                options={**deployment.record.options, PARKED_REPLICAS: len(replicas)},
            )
            await self._store.update_record(record)
            deployment.record = record
            deployment.replicas = []  # one assignment: new calls see it idle at once
            self._retiring[key] = replicas
        # Stopped outside the key's lock, so a call that wakes the deployment meanwhile
        # starts new backends at once instead of waiting for the old ones to exit.
        try:
            await self._retire(deployment, replicas)
        finally:
            if self._retiring.get(key) is replicas:
                del self._retiring[key]
        logger.info("%s is idle: stopped %d backend(s)", key, len(replicas))
        return deployment

    async def wake(self, key: str) -> Deployment:
        """Start the backends of an idle deployment again; returns once they are ready."""
        async with self._lock(key):
            deployment = self._get(key)
            if deployment.replicas:
                return deployment
            count = int(deployment.record.options.get(PARKED_REPLICAS) or 1)
            # Numbered after the replicas a park may still be stopping.
            added = await self._start_replicas(deployment, count, self._retiring.get(key, ()))
            options = dict(deployment.record.options)
            options.pop(PARKED_REPLICAS, None)
            record = dataclasses.replace(deployment.record, options=options)
            await self._store.update_record(record)
            deployment.record = record
            deployment.replicas = added
            logger.info("%s woke up with %d backend(s)", key, count)
            return deployment

    async def close(self) -> None:
        """Stop every backend but keep the desired state for the next boot.

        Backends of a placement that outlives the gateway (Ray actors) are left
        serving instead: the next boot attaches to them.
        """
        deployments = list(self.table.values())
        self.table.clear()
        if self.placement.outlives_gateway:
            # End only the owner tasks (one still starting stops its own backend).
            tasks = [r.task for d in deployments for r in d.replicas if r.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        else:
            await asyncio.gather(*(self._stop_all(d) for d in deployments))
        await self._keeper.close()

    # ---------------------------------------------------------------- internals

    def _get(self, key: str) -> Deployment:
        deployment = self.table.get(key)
        if deployment is None:
            raise NotDeployed(f"{key!r} is not deployed")
        return deployment

    async def _attach(
        self, record: DeploymentRecord, replica: int, saved: SavedBackend
    ) -> BackendHandle | None:
        try:
            return await self.placement.attach(record, replica, saved)
        except Exception:
            # Not fatal: the replica is started anew instead.
            logger.exception("could not re-attach %s#%d; starting it anew", record.key, replica)
            return None

    async def _start_replicas(
        self, deployment: Deployment, count: int, numbered_after: Sequence[Replica] = ()
    ) -> list[Replica]:
        """Add `count` replicas and start them; all ready, or none left behind.

        Their indexes follow those of `deployment` and of `numbered_after` (replicas
        that still exist elsewhere: the ones a replace or a park is retiring).
        """
        existing = (*deployment.replicas, *numbered_after)
        first_index = max((r.index for r in existing), default=-1) + 1
        indexes = list(range(first_index, first_index + count))
        await self._store.add_replicas(deployment.key, indexes)
        added = [Replica(i, 0) for i in indexes]
        try:
            await self.placement.reserve(deployment.record, indexes)
            await self._launch(deployment, added)
        except BaseException:
            await asyncio.gather(*(self._keeper.stop(deployment, r) for r in added))
            for replica in added:
                await self._store.remove_replica(deployment.key, replica.index)
            raise
        return added

    async def _launch(self, deployment: Deployment, replicas: list[Replica]) -> None:
        """Give each replica its owner task and wait until all are ready.

        The first failure is raised; the caller stops what did start.
        """
        loop = asyncio.get_running_loop()
        firsts: list[asyncio.Future[None]] = []
        for replica in replicas:
            first: asyncio.Future[None] = loop.create_future()
            firsts.append(first)
            self._keeper.supervise(deployment, replica, first)
        try:
            await asyncio.gather(*firsts)
        except BaseException:
            for first in firsts:  # nobody will await the others: mark them seen
                if not first.done():
                    first.cancel()
                elif not first.cancelled():
                    first.exception()
            raise

    async def _retire(self, deployment: Deployment, replicas: list[Replica]) -> None:
        """Stop replicas already out of the rotation, after their calls finish."""
        await self._drain(replicas)
        await asyncio.gather(*(self._keeper.stop(deployment, r) for r in replicas))
        for replica in replicas:
            await self._store.remove_replica(deployment.key, replica.index)

    async def _drain(self, replicas: list[Replica]) -> None:
        """Give requests already sent to these replicas time to finish."""
        deadline = self._clock.now() + self.config.drain_timeout
        # Polling keeps the hot path free of any event bookkeeping per request.
        while any(r.in_flight for r in replicas) and self._clock.now() < deadline:
            await self._clock.sleep(0.02)

    async def _stop_all(self, deployment: Deployment) -> None:
        await asyncio.gather(*(self._keeper.stop(deployment, r) for r in deployment.replicas))

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _emit(self, event: str, deployment: Deployment, replica: Replica) -> None:
        if self._listener is None:
            return
        try:
            self._listener(event, deployment, replica)
        except Exception:
            # A listener's bug must not end the supervision of a backend.
            logger.exception("event listener failed on %r for %s", event, deployment.key)


async def _log_tail(replica: Replica) -> str:
    return await replica.handle.log_tail() if replica.handle is not None else ""


def _state_of(replica: Replica) -> str:
    unhealthy = replica.state is State.RUNNING and not replica.healthy
    return f"{replica.state.value} (unhealthy)" if unhealthy else replica.state.value


def _first_line(text: str | None) -> str:
    return (text or "no error recorded").splitlines()[0]
