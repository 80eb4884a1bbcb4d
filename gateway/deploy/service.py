"""The deploy service: deploy, replace, scale and undeploy, in one place.

Handlers parse a request, call this service and render what it returns; no
handler touches the manager or the state store. The service owns the batchers
(created, retuned and closed with their deployments) and is, through the
manager, the only writer of deployment state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from gateway.dataplane.admission import Admission
from gateway.dataplane.batching import Batcher
from gateway.dataplane.upstream import UpstreamPool
from gateway.deploy.baselines import capture_baseline
from gateway.deploy.options import DEFAULT_BATCH_DELAY_MS, DEFAULT_MAX_QUEUE, DeployRequest
from gateway.deploy.registry import ModelVersionInfo, Registry
from gateway.edge.telemetry import GatewayMetrics
from gateway.errors import AliasNotFound, BackendTimeout, Conflict, GatewayError, ModelNotReady
from gateway.records.stores.base import Store
from supervisor.deployment import Deployment
from supervisor.errors import BackendStartError, NotDeployed, SupervisorError
from supervisor.manager import Manager, is_idle
from supervisor.state_store import DeploymentRecord

logger = logging.getLogger(__name__)

# How often the idle watch looks for deployments to scale to zero.
IDLE_CHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    deployment: Deployment
    created: bool
    message: str


@dataclass(slots=True)
class AliasState:
    """Where an alias deployment stands: what it serves, and why it may not follow."""

    alias: str
    error: str | None = None
    # A version that failed to start is not retried on every poll, only when the
    # alias moves again (or a webhook says it was set again).
    failed_version: str | None = None
    checked_at: float | None = None


class DeployService:
    """Orchestrates every change to what the gateway serves."""

    def __init__(
        self,
        manager: Manager,
        registry: Registry,
        store: Store,
        metrics: GatewayMetrics,
        pool: UpstreamPool,
        ready_timeout: float,
    ) -> None:
        self.manager = manager
        self._registry = registry
        self._store = store
        self._metrics = metrics
        self._pool = pool
        self._ready_timeout = ready_timeout
        # Read by the proxy on every call (one dict look-up); only this service writes it.
        self.batchers: dict[str, Batcher] = {}
        self.admissions: dict[str, Admission] = {}
        self.aliases: dict[str, AliasState] = {}
        self._alias_locks: dict[str, asyncio.Lock] = {}
        # Scale to zero: one wake-up per idle key that every waiting call shares,
        # and what the idle watch last saw of each key's traffic.
        self._waking: dict[str, asyncio.Task[Deployment]] = {}
        self._seen: dict[str, tuple[int, float]] = {}
        self._idle_watch: asyncio.Task[None] | None = None

    @property
    def table(self) -> dict[str, Deployment]:
        return self.manager.table

    async def restore(self) -> None:
        """Bring back the desired state recorded before the last stop."""
        await self.manager.restore()
        for deployment in self.manager.table.values():
            await self._configure(deployment)
            alias = deployment.record.options.get("alias")
            if alias:
                self.aliases[deployment.key] = AliasState(alias)
        self._idle_watch = asyncio.create_task(self._watch_idle())

    async def close(self) -> None:
        """Stop batching, then every backend; the desired state stays for the next boot."""
        if self._idle_watch is not None:
            self._idle_watch.cancel()
            await asyncio.gather(self._idle_watch, return_exceptions=True)
        for key in list(self.batchers):
            await self._drop_batcher(key)
        logger.info("stopping %d deployment(s)", len(self.manager.table))
        await self.manager.close()

    # ------------------------------------------------------------------ deploy

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        """Serve a model version; answers only once it is ready, or fails.

        On a deployed key, what can change in place does (replicas, batching);
        the rest needs `replace`. A key that is deployed but still starting
        (after a gateway restart) is waited for like a first deploy.
        """
        key = request.key
        existing = self.manager.table.get(key)
        if existing is not None and not request.replace:
            return await self._adjust(existing, request)

        info = await self._resolve(request)
        started = time.monotonic()
        previous = existing.record if existing is not None else None
        options = {
            **(previous.options if previous else {}),
            **request.batching,
            **request.resources,
            **request.traffic,
        }
        if request.alias is not None:
            options["alias"] = request.alias
        record = DeploymentRecord(
            key=key,
            model_name=request.name,
            version=info.version,
            run_uuid=info.run_id,
            env_manager=request.env_manager or (previous.env_manager if previous else "local"),
            options=options,
            created_at=previous.created_at if previous else time.time(),
        )
        if existing is not None:
            replicas = request.replicas or len(existing.replicas)
            deployment = await self.manager.replace(record, replicas)
            created, message = False, f"replaced the backends of {key} without downtime"
        else:
            deployment, created = await self.manager.deploy(record, replicas=request.replicas or 1)
            if not created:  # a concurrent deploy of the same key won the race
                return await self._adjust(deployment, request)
            message = f"deployed {key}: POST /{key} to call it"
        if request.alias is not None:
            message += f" (alias {request.alias!r} now points at version {info.version})"
            self.aliases[key] = AliasState(request.alias, checked_at=time.time())
        self._metrics.deploy_duration.labels(key).set(time.monotonic() - started)
        await self._configure(deployment)
        await capture_baseline(self._registry, self._store, request.name, info.version,
                               info.run_id)  # fmt: skip
        return DeployOutcome(deployment, created, message)

    async def _resolve(self, request: DeployRequest) -> ModelVersionInfo:
        if request.alias is not None:
            return await self._registry.resolve_alias(request.name, request.alias)
        assert request.version is not None
        return await self._registry.resolve(request.name, request.version)

    async def _adjust(self, deployment: Deployment, request: DeployRequest) -> DeployOutcome:
        """Apply a deploy call's options to a deployed key, then wait until it is ready."""
        key = deployment.key
        record = deployment.record
        if request.env_manager is not None and request.env_manager != record.env_manager:
            raise Conflict(
                f"{key} runs with env_manager={record.env_manager}, which cannot change in"
                f" place: redeploy with ?replace=true&env_manager={request.env_manager}"
                " (zero downtime), or undeploy it first"
            )
        asked = {k: v for k, v in request.resources.items() if record.options.get(k) != v}
        if asked:
            raise Conflict(
                f"{key} runs with other resource requests, which only new backends can get:"
                " redeploy with ?replace=true and the new requests (zero downtime)"
            )
        changes: list[str] = []
        if request.replicas is not None and request.replicas != len(deployment.replicas):
            before = len(deployment.replicas)
            deployment = await self.manager.scale(key, request.replicas)
            changes.append(f"scaled from {before} to {request.replicas} replica(s)")
        wanted = {k: v for k, v in request.batching.items() if record.options.get(k) != v}
        traffic = {k: v for k, v in request.traffic.items() if record.options.get(k, 0) != v}
        if wanted or traffic:
            deployment = await self.manager.set_options(key, {**wanted, **traffic})
            await self._configure(deployment)
            if wanted:
                changes.append(f"batching set to {wanted}")
            if traffic:
                changes.append(f"traffic options set to {traffic}")
        deployment = await self.manager.wait_ready(key, self._ready_timeout)
        if changes:
            message = f"{key} was already deployed: " + "; ".join(changes)
        else:
            message = f"{key} is already deployed; nothing was started"
        return DeployOutcome(deployment, False, message)

    # ------------------------------------------------------------ scale, undeploy

    async def scale(self, key: str, replicas: int) -> Deployment:
        """Change the replica count live."""
        deployment = await self.manager.scale(key, replicas)
        await self._configure(deployment)
        return deployment

    async def undeploy(self, key: str) -> Deployment:
        """Stop every backend of `key`, free its resources and forget it."""
        await self._drop_batcher(key)
        self.admissions.pop(key, None)
        deployment = await self.manager.undeploy(key)
        self.aliases.pop(key, None)
        self._metrics.forget(key)
        return deployment

    # ------------------------------------------------------------ scale to zero

    async def wake(self, deployment: Deployment) -> None:
        """Hold a call to an idle deployment until its backends are ready again.

        Calls that arrive during the wake-up share it (one start, never two) and
        resume in arrival order; a caller that leaves does not cancel it.
        """
        if not is_idle(deployment):
            return
        key = deployment.key
        task = self._waking.get(key)
        if task is None:
            task = asyncio.create_task(self._wake(key))
            self._waking[key] = task
            task.add_done_callback(self._woken)
        try:
            async with asyncio.timeout(self._ready_timeout):
                await asyncio.shield(task)
        except TimeoutError:
            raise BackendTimeout(
                f"{key} is waking up from idle and was not ready after {self._ready_timeout:g}s",
                headers={"Retry-After": "5"},
            ) from None
        except SupervisorError as exc:
            raise ModelNotReady(
                f"{key} was idle and could not be woken: {exc}", headers={"Retry-After": "5"}
            ) from None

    async def _wake(self, key: str) -> Deployment:
        started = time.monotonic()
        deployment = await self.manager.wake(key)
        self._metrics.cold_starts.labels(key).inc()
        self._metrics.cold_start_time.labels(key).observe(time.monotonic() - started)
        await self._configure(deployment)
        return deployment

    def _woken(self, task: asyncio.Task[Deployment]) -> None:
        for key, waking in list(self._waking.items()):
            if waking is task:
                del self._waking[key]
        if not task.cancelled() and task.exception() is not None:
            logger.error("waking a deployment failed: %s", task.exception())

    async def _watch_idle(self) -> None:
        """Scale to zero the deployments that had no call for their `idle_timeout_s`.

        Reads the replicas' answer and in-flight counters the hot path keeps
        anyway, so a call pays nothing for this.
        """
        while True:
            await asyncio.sleep(IDLE_CHECK_S)
            now = time.monotonic()
            for key, deployment in list(self.manager.table.items()):
                timeout = float(deployment.record.options.get("idle_timeout_s") or 0)
                if timeout <= 0 or not deployment.replicas or key in self._waking:
                    self._seen.pop(key, None)
                    continue
                replicas = deployment.replicas
                answers = sum(r.answers for r in replicas)
                busy = any(r.in_flight for r in replicas) or not all(r.routable for r in replicas)
                seen = self._seen.get(key)
                if busy or seen is None or seen[0] != answers:
                    self._seen[key] = (answers, now)
                elif now - seen[1] >= timeout:
                    self._seen.pop(key, None)
                    try:
                        await self.manager.park(key)
                    except SupervisorError as exc:
                        logger.warning("%s: could not scale to zero: %s", key, exc)

    # ----------------------------------------------------------------- aliases

    def alias_keys(self, name: str | None = None, alias: str | None = None) -> list[str]:
        """Keys of the deployments that follow an alias (of `name`, named `alias`)."""
        return [
            key
            for key, state in self.aliases.items()
            if key in self.manager.table
            and (name is None or self.manager.table[key].record.model_name == name)
            and (alias is None or state.alias == alias)
        ]

    async def follow_alias(self, key: str, *, retry_failed: bool = False) -> None:
        """Serve the version the deployment's alias points at now.

        A moved alias is followed with a zero-downtime replace. When the alias is
        gone, the registry is down, or the new version cannot start, the last good
        version keeps serving and the reason shows in `get_deployed_models`.
        """
        lock = self._alias_locks.setdefault(key, asyncio.Lock())
        async with lock:  # one move at a time per key; a poll and a webhook can race
            state = self.aliases.get(key)
            deployment = self.manager.table.get(key)
            if state is None or deployment is None:
                return
            record = deployment.record
            state.checked_at = time.time()
            try:
                info = await self._registry.resolve_alias(record.model_name, state.alias)
            except AliasNotFound:
                state.error = (
                    f"alias {state.alias!r} no longer exists on {record.model_name!r};"
                    f" still serving version {record.version}"
                )
                logger.warning("%s: %s", key, state.error)
                return
            except GatewayError as exc:
                state.error = f"could not read alias {state.alias!r}: {exc.detail}"
                logger.warning("%s: %s", key, state.error)
                return
            if info.version == record.version:
                state.error, state.failed_version = None, None
                return
            if info.version == state.failed_version and not retry_failed:
                return
            await self._move(deployment, state, info)

    async def _move(
        self, deployment: Deployment, state: AliasState, info: ModelVersionInfo
    ) -> None:
        key, old = deployment.key, deployment.record.version
        record = dataclasses.replace(deployment.record, version=info.version, run_uuid=info.run_id)
        logger.info("%s: alias %r moved from version %s to %s; replacing", key, state.alias,
                    old, info.version)  # fmt: skip
        started = time.monotonic()
        try:
            deployment = await self.manager.replace(record, len(deployment.replicas))
        except (BackendStartError, NotDeployed) as exc:
            state.failed_version = info.version
            state.error = (
                f"alias {state.alias!r} points at version {info.version}, which could not"
                f" start ({exc}); still serving version {old}"
            )
            logger.error("%s: %s", key, state.error)
            return
        state.error, state.failed_version = None, None
        self._metrics.deploy_duration.labels(key).set(time.monotonic() - started)
        await self._configure(deployment)
        await capture_baseline(self._registry, self._store, record.model_name, info.version,
                               info.run_id)  # fmt: skip
        logger.info("%s now serves version %s", key, info.version)

    # ------------------------------------------------------------------- views

    def describe(self) -> dict[str, dict[str, Any]]:
        """`get_deployed_models`: every deployment with its replicas and batching."""
        body = {}
        for key, deployment in self.manager.table.items():
            entry = deployment.describe()
            if is_idle(deployment):
                entry["status"] = "idle"
            batcher = self.batchers.get(key)
            entry["batching"] = None if batcher is None else batcher.describe()
            state = self.aliases.get(key)
            entry["alias"] = None if state is None else {
                "name": state.alias, "serving_version": deployment.record.version,
                "error": state.error, "checked_at": _iso(state.checked_at),
            }  # fmt: skip
            admission = self.admissions.get(key)
            entry["admission"] = None if admission is None else admission.describe()
            body[key] = entry
        return body

    # ---------------------------------------------------------------- batching

    async def _configure(self, deployment: Deployment) -> None:
        """Bring the proxy-side helpers (batcher, admission) in line with the options."""
        await self._configure_batching(deployment)
        self._configure_admission(deployment)

    def _configure_admission(self, deployment: Deployment) -> None:
        """Create, retune or remove the admission control of a deployment.

        A retune keeps the queue and the calls in flight: limits apply from now.
        """
        options = deployment.record.options
        concurrency = int(options.get("max_concurrency", 0))
        key = deployment.key
        if concurrency <= 0:
            self.admissions.pop(key, None)
            return
        queue = int(options.get("max_queue", DEFAULT_MAX_QUEUE))
        current = self.admissions.get(key)
        if current is None:
            self.admissions[key] = Admission(
                deployment, concurrency, queue,
                self._metrics.queue_time.labels(key), self._metrics.shed.labels(key),
            )  # fmt: skip
            return
        current.deployment, current.max_concurrency, current.max_queue = (
            deployment, concurrency, queue,
        )  # fmt: skip
        current.wake()

    async def _configure_batching(self, deployment: Deployment) -> None:
        """Create, retune or remove the batcher of a deployment from its options."""
        size = int(deployment.record.options.get("max_batch_size", 1))
        delay = int(deployment.record.options.get("max_batch_delay_ms", DEFAULT_BATCH_DELAY_MS))
        current = self.batchers.get(deployment.key)
        if size <= 1:
            await self._drop_batcher(deployment.key)
            return
        if current is not None and current.deployment is deployment:
            current.max_batch_size, current.max_delay = size, delay / 1000.0
            return
        self.batchers[deployment.key] = Batcher(self._pool, deployment, size, delay)
        if current is not None:
            await current.close()

    async def _drop_batcher(self, key: str) -> None:
        batcher = self.batchers.pop(key, None)
        if batcher is not None:
            await batcher.close()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
