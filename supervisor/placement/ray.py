"""Backends as detached Ray actors, one per replica, on the nodes of a Ray cluster.

Ray core only decides where each backend runs and keeps it there; the gateway
still proxies HTTP straight to the backend's `node_ip:port`. Each replica is a
detached actor named after its key and replica index in the gateway's own Ray
namespace, created with `max_restarts=0` so the manager stays the only owner of
restarts and backoff. Detached actors outlive the gateway: a restarted gateway
finds them again by name (`attach`), and removes those it no longer wants
(`sweep`). Every Ray call that waits on the cluster runs in a thread or is
awaited as a future, so the event loop never blocks.

Importing this module imports `ray` (`pip install 'modelgw[ray]'`): the gateway
imports it only when GATEWAY_PLACEMENT=ray.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence, Set
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from supervisor.errors import BackendStartError
from supervisor.placement.base import Placement
from supervisor.placement.ray_actor import BackendActor, NodeCommandFactory, fingerprint
from supervisor.placement.ray_cluster import RayConnection
from supervisor.placement.ray_handle import CALL_TIMEOUT, RayHandle, call, reason
from supervisor.placement.ray_scheduling import ResourceRequest, Unschedulable, choose_node
from supervisor.state_store import DeploymentRecord, SavedBackend, StateStore

logger = logging.getLogger(__name__)

Preflight = Callable[[DeploymentRecord, int], Awaitable[None]]
"""Checks a record against a cluster of N live nodes before a start; raises
ValueError with a sentence for the user (e.g. model files only this host has)."""

_RemoteActor: Any = ray.remote(BackendActor)
_SUSPECT_SECONDS = 60.0  # how long a node that lost a backend is placed last


def actor_name(key: str, replica: int) -> str:
    return f"{key}#{replica}"


def parse_actor_name(name: str) -> tuple[str, int] | None:
    key, sep, index = name.rpartition("#")
    return (key, int(index)) if sep and key and index.isdigit() else None


class RayPlacement(Placement):
    """Named detached actors in one Ray namespace; the cluster picks no node on its own."""

    name = "ray"
    outlives_gateway = True

    def __init__(
        self,
        command_factory: NodeCommandFactory,
        address: str,
        *,
        namespace: str = "modelgw",
        stop_timeout: float = 10.0,
        schedule_timeout: float = 60.0,
        connect_timeout: float = 30.0,
        preflight: Preflight | None = None,
        store: StateStore | None = None,
    ) -> None:
        self._factory = command_factory
        self.namespace = namespace
        self._stop_timeout = stop_timeout
        self._schedule_timeout = schedule_timeout
        self._preflight = preflight
        self._store = store
        self.connection = RayConnection(address, namespace, connect_timeout, self._on_connected)
        self._started: dict[tuple[str, int], RayHandle] = {}
        self._suspects: dict[str, float] = {}
        self._placing: dict[tuple[str, int], str] = {}  # node chosen for a start under way
        self._pending_sweep: Set[tuple[str, int]] | None = None

    # ---------------------------------------------------------------- contract

    async def reserve(self, record: DeploymentRecord, replicas: Sequence[int]) -> None:
        """Nothing to claim ahead: each node picks a free port when its backend starts."""

    async def start(self, record: DeploymentRecord, replica: int) -> RayHandle:
        await self._connected()
        name = actor_name(record.key, replica)
        existing = await self._lookup(name)
        if existing is not None:
            adopted = await self._adopt(existing, record)
            if adopted is not None:
                logger.info("%s: a running actor serves it already; adopted", name)
                return self._remember(record.key, replica, adopted)
        nodes = await asyncio.to_thread(ray.nodes)
        request = self._request(record)
        live = sum(1 for n in nodes if n.get("Alive"))
        if self._preflight is not None:
            try:
                await self._preflight(record, live)
            except ValueError as exc:
                raise BackendStartError(str(exc)) from None
        try:
            node_id = choose_node(request, nodes, self._replicas_on(record.key),
                                  self._replicas_on(None), self._avoid())  # fmt: skip
        except Unschedulable as exc:
            raise BackendStartError(str(exc)) from None
        # Counted as on that node from now on: replicas starting together spread too.
        self._placing[(record.key, replica)] = node_id
        try:
            actor = await asyncio.to_thread(self._create, name, record, request, node_id)
            try:
                info = await self._launch(actor, name, record, request)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(ray.kill, actor, no_restart=True))
                raise
        finally:
            self._placing.pop((record.key, replica), None)
        handle = RayHandle(actor, info, self._mark_suspect)
        logger.info("%s started on node %s at %s", name, handle.node, handle.endpoint)
        return self._remember(record.key, replica, handle)

    async def attach(
        self, record: DeploymentRecord, replica: int, saved: SavedBackend
    ) -> RayHandle | None:
        if not saved.ref:
            return None
        if not await self.connection.try_connect():
            # start() adopts it once the cluster answers again.
            return None
        actor = await self._lookup(saved.ref)
        if actor is None:
            return None
        handle = await self._adopt(actor, record)
        if handle is None:
            return None
        logger.info("re-attached %s on node %s at %s", saved.ref, handle.node, handle.endpoint)
        return self._remember(record.key, replica, handle)

    async def sweep(self, wanted: Set[tuple[str, int]]) -> None:
        if not await self.connection.try_connect():
            self._pending_sweep = set(wanted)  # swept once the cluster answers
            return
        await self._sweep(wanted)

    async def close(self) -> None:
        """Stop watching; the actors keep serving for the next gateway to attach."""
        handles = list(self._started.values())
        self._started.clear()
        await asyncio.gather(*(h.release() for h in handles))
        await self.connection.close()

    # ---------------------------------------------------------------- extras

    async def free_slots(self) -> int:
        """How many more replicas of the default size the cluster's free CPUs hold now."""
        if not await self.connection.try_connect():
            return 0
        free = await asyncio.to_thread(ray.available_resources)
        return int(free.get("CPU", 0.0) // ResourceRequest().num_cpus)

    # ---------------------------------------------------------------- internals

    async def _connected(self) -> None:
        try:
            await self.connection.connect()
        except ConnectionError as exc:
            raise BackendStartError(str(exc)) from None

    async def _on_connected(self) -> None:
        wanted, self._pending_sweep = self._pending_sweep, None
        if wanted is None:
            return
        if self._store is not None:
            # Deployments may have changed while the cluster was away: ask the file.
            wanted = {(r.key, s.replica) for r, rows in await self._store.load() for s in rows}
        await self._sweep(wanted)

    async def _sweep(self, wanted: Set[tuple[str, int]]) -> None:
        listed = await asyncio.to_thread(ray.util.list_named_actors, all_namespaces=True)
        for entry in listed:
            slot = parse_actor_name(entry["name"])
            if entry["namespace"] != self.namespace or slot is None or slot in wanted:
                continue
            handle = self._started.pop(slot, None)
            logger.warning("stopping unwanted backend actor %s", entry["name"])
            if handle is not None:
                await handle.stop(self._stop_timeout)
                continue
            actor = await self._lookup(entry["name"])
            if actor is not None:
                try:
                    await asyncio.wait_for(call(actor.stop, self._stop_timeout),
                                           self._stop_timeout + CALL_TIMEOUT)  # fmt: skip
                except (RayError, TimeoutError):
                    pass
                await asyncio.to_thread(ray.kill, actor, no_restart=True)

    def _create(
        self, name: str, record: DeploymentRecord, request: ResourceRequest, node_id: str
    ) -> Any:
        """Create the named actor (blocking: registering a name is a call to the cluster)."""
        options = request.actor_options()
        # Soft, and spilling when the node is busy: the choice spreads replicas, but
        # a node that is gone or full must not leave the replica pending.
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=True, _spill_on_unavailable=True)
        return _RemoteActor.options(
            name=name, namespace=self.namespace, lifetime="detached",
            max_restarts=0, max_task_retries=0, scheduling_strategy=strategy, **options,
        ).remote(name, self.namespace, fingerprint(record))  # fmt: skip

    async def _launch(
        self, actor: Any, name: str, record: DeploymentRecord, request: ResourceRequest
    ) -> dict[str, Any]:
        """Wait until Ray placed the actor (bounded), then start the backend through it."""
        try:
            await asyncio.wait_for(call(actor.where), self._schedule_timeout)
        except TimeoutError:
            free = await asyncio.to_thread(ray.available_resources)
            raise BackendStartError(
                f"no node of the Ray cluster had {request} free for"
                f" {self._schedule_timeout:g}s (free now: {_resources(free)});"
                " free some, add a node, or ask for less"
            ) from None
        except RayActorError as exc:
            raise BackendStartError(
                f"the actor of {name} died while starting: {reason(exc)}"
            ) from None
        try:
            info: dict[str, Any] = await call(actor.launch, self._factory, record)
        except RayTaskError as exc:
            cause = exc.cause if exc.cause is not None else exc
            raise BackendStartError(f"could not start {name} on its node: {reason(cause)}",
                                    getattr(cause, "log_tail", "")) from None  # fmt: skip
        except RayActorError as exc:
            raise BackendStartError(
                f"the actor of {name} died while starting: {reason(exc)}"
            ) from None
        return info

    async def _lookup(self, name: str) -> Any | None:
        try:
            return await asyncio.to_thread(ray.get_actor, name, namespace=self.namespace)
        except ValueError:
            return None

    async def _adopt(self, actor: Any, record: DeploymentRecord) -> RayHandle | None:
        """A handle of a running actor that serves `record`; otherwise it is killed."""
        try:
            info = await asyncio.wait_for(call(actor.describe), CALL_TIMEOUT)
        except (RayError, TimeoutError) as exc:
            info = None
            logger.info("actor %s does not answer (%s)", getattr(actor, "_ray_actor_id", "?"),
                        reason(exc))  # fmt: skip
        usable = (
            info is not None
            and info["fingerprint"] == fingerprint(record)
            and info["port"] is not None
            and info["returncode"] is None
        )
        if info is not None and usable:
            return RayHandle(actor, info, self._mark_suspect)
        await asyncio.to_thread(ray.kill, actor, no_restart=True)
        await self._until_name_free(info["name"] if info else None)
        return None

    async def _until_name_free(self, name: str | None) -> None:
        # A killed actor frees its name at once; bounded all the same.
        deadline = time.monotonic() + CALL_TIMEOUT
        while name is not None and time.monotonic() < deadline:
            if await self._lookup(name) is None:
                return
            await asyncio.sleep(0.1)

    def _request(self, record: DeploymentRecord) -> ResourceRequest:
        try:
            return ResourceRequest.from_options(record.options)
        except (TypeError, ValueError) as exc:
            raise BackendStartError(f"bad resource request in the deployment: {exc}") from None

    def _remember(self, key: str, replica: int, handle: RayHandle) -> RayHandle:
        for slot, old in list(self._started.items()):
            if not old.alive:
                del self._started[slot]
        self._started[(key, replica)] = handle
        return handle

    def _replicas_on(self, key: str | None) -> dict[str, int]:
        """Backends of `key` (of every key for None) per node, started or starting."""
        nodes = [h.node for (k, _), h in self._started.items() if h.alive and key in (None, k)]
        nodes += [node for (k, _), node in self._placing.items() if key in (None, k)]
        return dict(collections.Counter(nodes))

    def _mark_suspect(self, node_id: str) -> None:
        self._suspects[node_id] = time.monotonic()

    def _avoid(self) -> set[str]:
        now = time.monotonic()
        return {n for n, since in self._suspects.items() if now - since < _SUSPECT_SECONDS}


def _resources(free: dict[str, float]) -> str:
    shown = {k: v for k, v in sorted(free.items()) if not k.startswith("node:")}
    return ", ".join(f"{k} {v:g}" for k, v in shown.items()) or "nothing"


__all__ = ["RayHandle", "RayPlacement", "actor_name", "parse_actor_name"]
