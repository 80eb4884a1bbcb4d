"""The deploy service: deploy, replace, scale and undeploy, in one place.

Handlers parse a request, call this service and render what it returns; no
handler touches the manager or the state store. The service owns the batchers
(created, retuned and closed with their deployments) and is, through the
manager, the only writer of deployment state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from gateway.dataplane.batching import Batcher
from gateway.dataplane.upstream import UpstreamPool
from gateway.deploy.baselines import capture_baseline
from gateway.deploy.options import DEFAULT_BATCH_DELAY_MS, DeployRequest
from gateway.deploy.registry import Registry
from gateway.edge.names import deployment_key
from gateway.edge.telemetry import GatewayMetrics
from gateway.errors import Conflict
from gateway.records.stores.base import Store
from supervisor.deployment import Deployment
from supervisor.manager import Manager
from supervisor.state_store import DeploymentRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeployOutcome:
    deployment: Deployment
    created: bool
    message: str


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

    @property
    def table(self) -> dict[str, Deployment]:
        return self.manager.table

    async def restore(self) -> None:
        """Bring back the desired state recorded before the last stop."""
        await self.manager.restore()
        for deployment in self.manager.table.values():
            await self._configure_batching(deployment)

    async def close(self) -> None:
        """Stop batching, then every backend; the desired state stays for the next boot."""
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
        key = deployment_key(request.name, request.version)
        existing = self.manager.table.get(key)
        if existing is not None and not request.replace:
            return await self._adjust(existing, request)

        info = await self._registry.resolve(request.name, request.version)
        started = time.monotonic()
        previous = existing.record if existing is not None else None
        record = DeploymentRecord(
            key=key,
            model_name=request.name,
            version=request.version,
            run_uuid=info.run_id,
            env_manager=request.env_manager or (previous.env_manager if previous else "local"),
            options={**(previous.options if previous else {}), **request.batching},
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
        self._metrics.deploy_duration.labels(key).set(time.monotonic() - started)
        await self._configure_batching(deployment)
        await capture_baseline(self._registry, self._store, request.name, request.version,
                               info.run_id)  # fmt: skip
        return DeployOutcome(deployment, created, message)

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
        changes: list[str] = []
        if request.replicas is not None and request.replicas != len(deployment.replicas):
            before = len(deployment.replicas)
            deployment = await self.manager.scale(key, request.replicas)
            changes.append(f"scaled from {before} to {request.replicas} replica(s)")
        wanted = {k: v for k, v in request.batching.items() if record.options.get(k) != v}
        if wanted:
            deployment = await self.manager.set_options(key, wanted)
            await self._configure_batching(deployment)
            changes.append(f"batching set to {wanted}")
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
        await self._configure_batching(deployment)
        return deployment

    async def undeploy(self, key: str) -> Deployment:
        """Stop every backend of `key`, free its resources and forget it."""
        await self._drop_batcher(key)
        deployment = await self.manager.undeploy(key)
        self._metrics.forget(key)
        return deployment

    # ------------------------------------------------------------------- views

    def describe(self) -> dict[str, dict[str, Any]]:
        """`get_deployed_models`: every deployment with its replicas and batching."""
        body = {}
        for key, deployment in self.manager.table.items():
            entry = deployment.describe()
            batcher = self.batchers.get(key)
            entry["batching"] = None if batcher is None else batcher.describe()
            body[key] = entry
        return body

    # ---------------------------------------------------------------- batching

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
