"""Keeps every deployment's backends alive: start, probe, restart, stop.

Each replica has one owner task (`_keep_alive`) that walks the state machine in
`states.py`. The manager's `table` is the routing table the proxy reads; it is
replaced key by key, never mutated while a request reads a deployment's list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from supervisor.backoff import FlapDetector, backoff_delay
from supervisor.clock import Clock, SystemClock
from supervisor.deployment import Deployment, Replica
from supervisor.errors import BackendStartError, NotDeployed
from supervisor.probe import ping
from supervisor.process import ChildProcess, Command, sweep_orphan_group
from supervisor.state_store import DeploymentRecord, StateStore
from supervisor.states import State, can_transition

logger = logging.getLogger(__name__)

CommandFactory = Callable[[DeploymentRecord, int], Awaitable[Command]]
"""Builds the command that serves `record` on a port (the gateway knows how)."""

EventListener = Callable[[str, Deployment, Replica], None]
"""Called with "started", "restarted", "unhealthy", "fatal" or "stopped"."""


@dataclass(frozen=True, slots=True)
class SupervisorConfig:
    """Timing and limits of supervision; built by the gateway from its settings."""

    log_dir: Path
    host: str = "127.0.0.1"
    deploy_timeout: float = 120.0
    stop_timeout: float = 10.0
    drain_timeout: float = 10.0
    health_interval: float = 5.0
    health_timeout: float = 2.0
    health_failures: int = 3
    max_start_retries: int = 10
    backoff_cap: float = 30.0
    stable_after: float = 60.0
    ready_poll_interval: float = 0.1


class Manager:
    """Owns every backend process of the gateway."""

    def __init__(
        self,
        store: StateStore,
        command_factory: CommandFactory,
        config: SupervisorConfig,
        probe_session: aiohttp.ClientSession,
        listener: EventListener | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._store = store
        self._command_factory = command_factory
        self.config = config
        self._session = probe_session
        self._listener = listener
        self._clock: Clock = clock or SystemClock()
        self._locks: dict[str, asyncio.Lock] = {}
        self.table: dict[str, Deployment] = {}
        # Clean-ups started from done-callbacks, which cannot await; close() does.
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ public

    async def restore(self) -> None:
        """Bring back every deployment recorded in SQLite (the desired state).

        Returns at once: backends come up in the background and answer 503
        `model_not_ready` until their first probe passes.
        """
        for record, rows in await self._store.load():
            for _replica, port, pid in rows:
                if pid:
                    await asyncio.to_thread(sweep_orphan_group, pid, str(port))
            deployment = Deployment(
                record, [Replica(index, port, self.config.host) for index, port, _ in rows]
            )
            self.table[record.key] = deployment
            for replica in deployment.replicas:
                self._supervise(deployment, replica, first_start=None)
            logger.info("restoring deployment %s on ports %s", record.key, [r[1] for r in rows])

    async def deploy(self, record: DeploymentRecord, replicas: int = 1) -> tuple[Deployment, bool]:
        """Serve `record`; returns (deployment, created). Idempotent per key.

        Raises NoFreePort, or BackendStartError after cleaning up: no process
        left running and the ports released.
        """
        async with self._lock(record.key):
            existing = self.table.get(record.key)
            if existing is not None:
                return existing, False
            started = self._clock.now()
            ports = await self._store.reserve(record, replicas)
            deployment = Deployment(
                record, [Replica(i, port, self.config.host) for i, port in enumerate(ports)]
            )
            self.table[record.key] = deployment
            try:
                await self._launch(deployment, deployment.replicas)
            except BaseException:
                self.table.pop(record.key, None)
                await self._stop_all(deployment)
                await self._store.remove(record.key)
                raise
            logger.info(
                "deployed %s on ports %s in %.1fs", record.key, ports, self._clock.now() - started
            )
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
            added = await self._start_replicas(staging, replicas, index_base=deployment)
            old = deployment.replicas
            deployment.record = record
            deployment.replicas = added
            await self._store.update_record(record)
            await self._retire(deployment, old)
            logger.info("replaced %s: ports %s -> %s", record.key,
                        [r.port for r in old], [r.port for r in added])  # fmt: skip
            return deployment

    async def undeploy(self, key: str) -> Deployment:
        """Stop every backend of `key`, free its ports and forget it."""
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
                raise BackendStartError(
                    f"{key} cannot start: {reasons}", await self._log_tail(fatal[0])
                )
            if self._clock.now() >= deadline:
                states = ", ".join(f"#{r.index} {_state_of(r)}" for r in replicas)
                laggard = next(r for r in replicas if not r.routable)
                raise BackendStartError(
                    f"{key} was not ready after {timeout:g}s: {states}",
                    await self._log_tail(laggard),
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

    async def close(self) -> None:
        """Stop every backend but keep the desired state for the next boot."""
        deployments = list(self.table.values())
        self.table.clear()
        await asyncio.gather(*(self._stop_all(d) for d in deployments))
        if self._background:
            await asyncio.wait(self._background)

    # ---------------------------------------------------------------- internals

    def _get(self, key: str) -> Deployment:
        deployment = self.table.get(key)
        if deployment is None:
            raise NotDeployed(f"{key!r} is not deployed")
        return deployment

    async def _start_replicas(
        self, deployment: Deployment, count: int, index_base: Deployment | None = None
    ) -> list[Replica]:
        """Reserve ports for `count` more replicas and start them; all ready, or none."""
        existing = (index_base or deployment).replicas
        first_index = max((r.index for r in existing), default=-1) + 1
        indexes = list(range(first_index, first_index + count))
        ports = await self._store.add_replicas(deployment.key, indexes)
        added = [Replica(i, p, self.config.host) for i, p in zip(indexes, ports, strict=True)]
        try:
            await self._launch(deployment, added)
        except BaseException:
            await asyncio.gather(*(self._stop_replica(deployment, r) for r in added))
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
            self._supervise(deployment, replica, first_start=first)
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
        await asyncio.gather(*(self._stop_replica(deployment, r) for r in replicas))
        for replica in replicas:
            await self._store.remove_replica(deployment.key, replica.index)

    async def _log_tail(self, replica: Replica) -> str:
        return await replica.process.log_tail() if replica.process is not None else ""

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

    def _supervise(
        self, deployment: Deployment, replica: Replica, first_start: asyncio.Future[None] | None
    ) -> None:
        """Give `replica` its owner task; its end, expected or not, is handled."""
        task = asyncio.create_task(
            self._keep_alive(deployment, replica, first_start),
            name=f"keep-alive {deployment.key}#{replica.index}",
        )
        task.add_done_callback(
            functools.partial(self._supervision_ended, deployment, replica, first_start)
        )
        replica.task = task

    def _supervision_ended(
        self,
        deployment: Deployment,
        replica: Replica,
        first_start: asyncio.Future[None] | None,
        task: asyncio.Task[None],
    ) -> None:
        """Make an owner task's end visible; a user's deploy is always answered."""
        name = f"{deployment.key}#{replica.index}"
        if task.cancelled():
            error = BackendStartError(f"{name} was stopped before it was ready")
        elif (exc := task.exception()) is None:
            error = BackendStartError(replica.last_error or f"{name} did not start")
        else:
            # A bug: without this the replica would sit in its last state forever.
            logger.error("supervision of %s died", name, exc_info=exc)
            replica.last_error = f"supervision failed: {type(exc).__name__}: {exc}"
            replica.healthy = False
            if replica.state is State.RUNNING:
                replica.transition(State.BACKOFF)  # RUNNING -> BACKOFF: nobody watches it now
            if can_transition(replica.state, State.FATAL):
                replica.transition(State.FATAL)  # STARTING|BACKOFF -> FATAL
            process = replica.process
            if process is not None and process.returncode is None:
                self._in_background(process.stop(self.config.stop_timeout))
            self._emit("fatal", deployment, replica)
            error = BackendStartError(replica.last_error)
        if first_start is not None and not first_start.done():
            first_start.set_exception(error)

    def _in_background(self, work: Awaitable[object]) -> None:
        async def run() -> None:
            await work

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _keep_alive(
        self, deployment: Deployment, replica: Replica, first_start: asyncio.Future[None] | None
    ) -> None:
        """Owner task of one replica: start it, watch it, restart it with backoff.

        With `first_start` set (a user's deploy call), the first failure is
        reported there and the task ends; the caller cleans up.
        """
        failures = 0
        flaps = FlapDetector(max_restarts=5, window_seconds=self.config.stable_after)
        key = deployment.key
        while True:
            replica.transition(State.STARTING)  # STOPPED|BACKOFF|FATAL -> STARTING
            try:
                await self._start(deployment, replica)
            except Exception as raised:
                exc = _start_error(raised)
                if exc is not raised:
                    logger.warning("%s#%d: unexpected error while starting", key, replica.index,
                                   exc_info=raised)  # fmt: skip
                replica.last_error = f"{exc}\n{exc.log_tail}".strip()
                if first_start is not None:
                    if not first_start.done():
                        first_start.set_exception(exc)
                    return
                failures += 1
                if failures > self.config.max_start_retries:
                    replica.transition(State.FATAL)  # STARTING -> FATAL
                    logger.error("%s#%d failed %d starts; giving up", key, replica.index, failures)
                    self._emit("fatal", deployment, replica)
                    return
                replica.transition(State.BACKOFF)  # STARTING -> BACKOFF
                delay = backoff_delay(failures, cap=self.config.backoff_cap)
                logger.warning(
                    "%s#%d failed to start (%s); retry %d in %.1fs",
                    key,
                    replica.index,
                    exc,
                    failures,
                    delay,
                )
                await self._clock.sleep(delay)
                continue

            replica.transition(State.RUNNING)  # STARTING -> RUNNING
            up_since = self._clock.now()
            replica.healthy = True
            replica.last_error = None
            if first_start is not None:
                if not first_start.done():
                    first_start.set_result(None)
                first_start = None
                self._emit("started", deployment, replica)
            else:
                self._emit("restarted" if replica.restarts else "started", deployment, replica)
            reason = await self._watch(replica)

            # RUNNING -> BACKOFF: the backend died or stopped answering.
            replica.healthy = False
            replica.transition(State.BACKOFF)
            replica.last_error = reason
            uptime = self._clock.now() - up_since
            failures = 1 if uptime >= self.config.stable_after else failures + 1
            flapping = flaps.record(self._clock.now())
            if replica.process is not None:
                await replica.process.stop(self.config.stop_timeout)
            replica.restarts += 1
            self._emit("unhealthy", deployment, replica)
            delay = (
                self.config.backoff_cap
                if flapping
                else backoff_delay(failures, cap=self.config.backoff_cap)
            )
            logger.warning(
                "%s#%d %s; restart %d in %.1fs%s",
                key,
                replica.index,
                reason,
                replica.restarts,
                delay,
                " (flapping)" if flapping else "",
            )
            await self._clock.sleep(delay)

    async def _start(self, deployment: Deployment, replica: Replica) -> None:
        """Build the command, spawn the backend and wait until its /ping answers.

        The whole of it is bounded by `deploy_timeout`: building the command may
        download artifacts, and a deploy must answer within that time.
        """
        timeout = self.config.deploy_timeout
        deadline = self._clock.now() + timeout
        replica.process = None
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                try:
                    command = await self._command_factory(deployment.record, replica.port)
                except Exception as exc:
                    raise BackendStartError(
                        f"could not build the backend command: {type(exc).__name__}: {exc}"
                    ) from exc
                log_path = self.config.log_dir / f"{deployment.key}.{replica.index}.log"
                replica.process = await ChildProcess.spawn(command, log_path)
                replica.started_at = self._clock.wall()
                await self._store.set_pid(deployment.key, replica.index, replica.process.pid)
                await self._wait_ready(replica, deadline)
        except BaseException as exc:
            process = replica.process
            tail = ""
            if process is not None:
                await process.stop(self.config.stop_timeout)
                tail = await process.log_tail()
            if isinstance(exc, TimeoutError) and scope.expired():
                if process is None:
                    message = f"could not build the backend command within {timeout:g}s"
                else:
                    message = f"backend on port {replica.port} was not ready after {timeout:g}s"
                raise BackendStartError(message, tail) from None
            raise

    async def _wait_ready(self, replica: Replica, deadline: float) -> None:
        process = replica.process
        assert process is not None
        url = f"{replica.base_url}/ping"
        while True:
            if process.returncode is not None:
                raise BackendStartError(
                    f"backend on port {replica.port} exited with code {process.returncode}"
                    " before it was ready",
                    await process.log_tail(),
                )
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                raise BackendStartError(
                    f"backend on port {replica.port} was not ready after"
                    f" {self.config.deploy_timeout:g}s",
                    await process.log_tail(),
                )
            if await ping(self._session, url, min(self.config.health_timeout, remaining)):
                return
            await self._clock.sleep(min(self.config.ready_poll_interval, max(remaining, 0)))

    async def _watch(self, replica: Replica) -> str:
        """Wait until the backend exits or misses `health_failures` pings in a row."""
        process = replica.process
        assert process is not None
        exited = asyncio.ensure_future(process.wait())
        misses = 0
        url = f"{replica.base_url}/ping"
        try:
            while True:
                # Health checks tick on the loop's own time, not the injected clock:
                # a fake clock's instant sleep would turn this wait into a busy loop.
                done, _ = await asyncio.wait({exited}, timeout=self.config.health_interval)
                if done:
                    return f"backend exited with code {exited.result()}"
                if await ping(self._session, url, self.config.health_timeout):
                    misses = 0
                    replica.healthy = True
                    continue
                misses += 1
                replica.healthy = False
                if misses >= self.config.health_failures:
                    return f"backend missed {misses} health checks in a row"
        finally:
            exited.cancel()

    async def _drain(self, replicas: list[Replica]) -> None:
        """Give requests already sent to these replicas time to finish."""
        deadline = self._clock.now() + self.config.drain_timeout
        # Polling keeps the hot path free of any event bookkeeping per request.
        while any(r.in_flight for r in replicas) and self._clock.now() < deadline:
            await self._clock.sleep(0.02)

    async def _stop_all(self, deployment: Deployment) -> None:
        await asyncio.gather(*(self._stop_replica(deployment, r) for r in deployment.replicas))

    async def _stop_replica(self, deployment: Deployment, replica: Replica) -> None:
        task = replica.task
        if task is not None and not task.done():
            task.cancel()
            # asyncio.wait never raises the task's CancelledError into us, and
            # still lets our own cancellation through.
            await asyncio.wait({task})
        replica.task = None
        replica.healthy = False
        if replica.state is State.BACKOFF:
            # BACKOFF -> STOPPED: nothing runs while a restart waits (the stop
            # below only covers a task cancelled in the middle of its own stop).
            if replica.process is not None:
                await replica.process.stop(self.config.stop_timeout)
            replica.transition(State.STOPPED)
        elif replica.state is not State.STOPPED:
            replica.transition(State.STOPPING)  # any -> STOPPING
            if replica.process is not None:
                await replica.process.stop(self.config.stop_timeout)
            replica.transition(State.STOPPED)  # STOPPING -> STOPPED
        self._emit("stopped", deployment, replica)


def _start_error(exc: Exception) -> BackendStartError:
    """Any failure of a start as a BackendStartError that names its cause."""
    if isinstance(exc, BackendStartError):
        return exc
    return BackendStartError(f"could not start the backend: {type(exc).__name__}: {exc}")


def _state_of(replica: Replica) -> str:
    unhealthy = replica.state is State.RUNNING and not replica.healthy
    return f"{replica.state.value} (unhealthy)" if unhealthy else replica.state.value


def _first_line(text: str | None) -> str:
    return (text or "no error recorded").splitlines()[0]
