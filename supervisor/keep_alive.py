"""The owner task of each replica: start it, probe it, watch it, restart it.

One task per replica walks the state machine in `states.py` through a
placement, which alone knows where the backend runs. Backoff sleeps, flap
windows and readiness deadlines read the injected clock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from supervisor.backoff import FlapDetector, backoff_delay
from supervisor.clock import Clock
from supervisor.config import SupervisorConfig
from supervisor.deployment import Deployment, Replica
from supervisor.errors import BackendStartError
from supervisor.placement.base import BackendHandle, Placement
from supervisor.probe import cpu_ticks, ping
from supervisor.state_store import StateStore
from supervisor.states import State, can_transition

logger = logging.getLogger(__name__)

Emit = Callable[[str, Deployment, Replica], None]


class Keeper:
    """Runs and stops the owner tasks of replicas; the manager decides which."""

    def __init__(
        self,
        placement: Placement,
        store: StateStore,
        config: SupervisorConfig,
        probe_session: aiohttp.ClientSession,
        clock: Clock,
        emit: Emit,
    ) -> None:
        self._placement = placement
        self._store = store
        self.config = config
        self._session = probe_session
        self._clock = clock
        self._emit = emit
        # Clean-ups started from done-callbacks, which cannot await; close() does.
        self._background: set[asyncio.Task[None]] = set()

    def supervise(
        self,
        deployment: Deployment,
        replica: Replica,
        first_start: asyncio.Future[None] | None,
        attached: BackendHandle | None = None,
    ) -> None:
        """Give `replica` its owner task; its end, expected or not, is handled.

        With `first_start` (a user's deploy), the first start's outcome is
        reported there and a failure ends the task. With `attached` (found
        running after a gateway restart), that backend is adopted, not started.
        """
        task = asyncio.create_task(
            self._keep_alive(deployment, replica, first_start, attached),
            name=f"keep-alive {deployment.key}#{replica.index}",
        )
        task.add_done_callback(
            functools.partial(self._supervision_ended, deployment, replica, first_start)
        )
        replica.task = task

    async def stop(self, deployment: Deployment, replica: Replica) -> None:
        """End the owner task, then the backend."""
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
            await self._stop_handle(replica)
            replica.transition(State.STOPPED)
        elif replica.state is not State.STOPPED:
            replica.transition(State.STOPPING)  # any -> STOPPING
            await self._stop_handle(replica)
            replica.transition(State.STOPPED)  # STOPPING -> STOPPED
        self._emit("stopped", deployment, replica)

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(self._background)

    # ---------------------------------------------------------------- the task

    async def _keep_alive(
        self,
        deployment: Deployment,
        replica: Replica,
        first_start: asyncio.Future[None] | None,
        attached: BackendHandle | None,
    ) -> None:
        failures = 0
        flaps = FlapDetector(max_restarts=5, window_seconds=self.config.stable_after)
        key = deployment.key
        while True:
            replica.transition(State.STARTING)  # STOPPED|BACKOFF|FATAL -> STARTING
            try:
                await self._start(deployment, replica, attached)
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
                logger.warning("%s#%d failed to start (%s); retry %d in %.1fs",
                               key, replica.index, exc, failures, delay)  # fmt: skip
                await self._clock.sleep(delay)
                continue
            finally:
                attached = None  # adopted once; every restart starts anew

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
            reason, hung = await self._watch(replica)

            # RUNNING -> BACKOFF: the backend died or stopped answering.
            replica.healthy = False
            replica.transition(State.BACKOFF)
            replica.last_error = reason
            if hung:
                self._fail_calls(deployment, replica, reason)
            uptime = self._clock.now() - up_since
            failures = 1 if uptime >= self.config.stable_after else failures + 1
            flapping = flaps.record(self._clock.now())
            await self._stop_handle(
                replica, self.config.hung_stop_timeout if hung else self.config.stop_timeout
            )
            replica.restarts += 1
            self._emit("unhealthy", deployment, replica)
            cap = self.config.backoff_cap
            delay = cap if flapping else backoff_delay(failures, cap=cap)
            logger.warning("%s#%d %s; restart %d in %.1fs%s", key, replica.index, reason,
                           replica.restarts, delay, " (flapping)" if flapping else "")  # fmt: skip
            await self._clock.sleep(delay)

    async def _start(
        self, deployment: Deployment, replica: Replica, attached: BackendHandle | None
    ) -> None:
        """Start (or adopt) the backend and wait until its /ping answers.

        The whole of it is bounded by `deploy_timeout`: starting may download
        artifacts, and a deploy must answer within that time.
        """
        timeout = self.config.deploy_timeout
        deadline = self._clock.now() + timeout
        handle = attached
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                if handle is None:
                    handle = await self._placement.start(deployment.record, replica.index)
                replica.bind(handle)
                replica.started_at = self._clock.wall()
                await self._store.set_backend(
                    deployment.key, replica.index,
                    pid=handle.pid, ref=handle.ref, node=handle.node, endpoint=handle.endpoint,
                )  # fmt: skip
                await self._wait_ready(handle, deadline)
        except BaseException as exc:
            tail = ""
            if handle is not None:
                await handle.stop(self.config.stop_timeout)
                tail = await handle.log_tail()
            if isinstance(exc, TimeoutError) and scope.expired():
                if handle is None:
                    message = f"the backend did not start within {timeout:g}s"
                else:
                    message = f"{_where(handle)} was not ready after {timeout:g}s"
                raise BackendStartError(message, tail) from None
            raise

    async def _wait_ready(self, handle: BackendHandle, deadline: float) -> None:
        url = f"{handle.endpoint}/ping"
        while True:
            if not handle.alive:
                ended = await handle.wait_exit()
                raise BackendStartError(
                    f"{_where(handle)} {_ending(ended)} before it was ready",
                    await handle.log_tail(),
                )
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                raise BackendStartError(
                    f"{_where(handle)} was not ready after {self.config.deploy_timeout:g}s",
                    await handle.log_tail(),
                )
            if await ping(self._session, url, min(self.config.health_timeout, remaining)):
                return
            await self._clock.sleep(min(self.config.ready_poll_interval, max(remaining, 0)))

    async def _watch(self, replica: Replica) -> tuple[str, bool]:
        """Wait until the backend exits or hangs; returns why, and whether it hung.

        Pings go out every `health_interval` on a fixed cadence and wait at most
        that long. A failed ping counts as a miss only when the backend showed no
        sign of life while it waited: no call to it was answered and, with calls in
        flight, its processes used no CPU. A single-worker backend working on long
        calls cannot answer a ping, but it is busy, not hung; a stopped or
        deadlocked one uses no CPU and answers nothing, so a hang is found within
        interval x failures plus one ping. Without a local pid (a backend that runs
        elsewhere) only answered calls count. A backend that burns CPU on a call
        forever is caught once that call times out and nothing is in flight.
        """
        handle = replica.handle
        assert handle is not None
        exited = asyncio.ensure_future(handle.wait_exit())
        interval = self.config.health_interval
        timeout = min(self.config.health_timeout, interval)
        failures = self.config.health_failures
        url = f"{handle.endpoint}/ping"
        # Health checks tick on the loop's own time, not the injected clock: a fake
        # clock's instant sleep would turn this wait into a busy loop.
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        misses = 0
        try:
            while True:
                done, _ = await asyncio.wait({exited}, timeout=max(next_tick - loop.time(), 0))
                if done:
                    return f"backend {_ending(exited.result())}", False
                # The next tick keeps the cadence, but never fires a burst to catch up.
                next_tick = max(next_tick + interval, loop.time())
                answers = replica.answers
                cpu = await cpu_ticks(handle.pid) if replica.in_flight else None
                if await ping(self._session, url, timeout):
                    alive = True
                elif replica.answers != answers:
                    alive = True  # it answered calls: the ping lost a race with them
                else:
                    alive = cpu is not None and (await cpu_ticks(handle.pid) or 0) > cpu
                    if alive:
                        logger.debug("%s:%d missed a ping while busy with %d call(s)",
                                     handle.host, handle.port, replica.in_flight)  # fmt: skip
                if alive:
                    misses = 0
                    replica.healthy = True
                    continue
                misses += 1
                replica.healthy = False  # out of the rotation until it answers again
                if misses >= failures:
                    return f"backend hung: missed {misses} health checks in a row", True
        finally:
            exited.cancel()

    def _fail_calls(self, deployment: Deployment, replica: Replica, reason: str) -> None:
        """Fail the calls waiting on a hung backend now, not at its stop."""
        hook = self.config.on_hung
        if hook is None:
            return
        try:
            hook(replica.host, replica.port, reason)
        except Exception:
            # The restart matters more than the hook: its calls then end at the stop.
            logger.exception("failing the calls of hung %s#%d failed", deployment.key,
                             replica.index)  # fmt: skip

    async def _stop_handle(self, replica: Replica, grace: float | None = None) -> None:
        if replica.handle is not None:
            await replica.handle.stop(self.config.stop_timeout if grace is None else grace)

    # ------------------------------------------------------------ the task's end

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
            handle = replica.handle
            if handle is not None and handle.alive:
                self._in_background(handle.stop(self.config.stop_timeout))
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


def _start_error(exc: Exception) -> BackendStartError:
    """Any failure of a start as a BackendStartError that names its cause."""
    if isinstance(exc, BackendStartError):
        return exc
    return BackendStartError(f"could not start the backend: {type(exc).__name__}: {exc}")


def _where(handle: BackendHandle) -> str:
    if handle.node == "local":
        return f"backend on port {handle.port}"
    return f"backend at {handle.endpoint} on node {handle.node}"


def _ending(ended: int | str) -> str:
    return f"exited with code {ended}" if isinstance(ended, int) else f"ended ({ended})"
