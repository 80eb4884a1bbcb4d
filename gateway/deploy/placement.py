"""Where backends run: the placement the settings choose, and what only some can tell.

The supervisor defines the contract (supervisor/placement/base.py); this module
picks an implementation and gives it what it needs from the gateway's settings.
`ray` (and the Ray placement's module) is imported only when GATEWAY_PLACEMENT=ray.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

from gateway.deploy.launchers import Launcher, node_command
from gateway.settings import Settings
from supervisor.placement.base import Placement
from supervisor.placement.local import LocalPlacement
from supervisor.state_store import DeploymentRecord, StateStore


def make_placement(settings: Settings, store: StateStore, launcher: Launcher) -> Placement:
    """Local child processes on the configured port range (the default), or Ray actors."""
    if settings.placement == "ray":
        return _ray_placement(settings, store)
    return LocalPlacement(
        store,
        launcher.build,
        settings.backend_log_dir,
        port_range=settings.port_range,
        stop_timeout=settings.stop_timeout,
    )


def _ray_placement(settings: Settings, store: StateStore) -> Placement:
    try:
        from supervisor.placement.ray import RayPlacement
    except ImportError as exc:
        raise SystemExit(
            f"GATEWAY_PLACEMENT=ray needs Ray ({exc}): pip install 'modelgw[ray]'"
        ) from None
    assert settings.ray_address is not None  # the settings check it
    return RayPlacement(
        node_command(settings),
        settings.ray_address,
        namespace=settings.ray_namespace,
        stop_timeout=settings.stop_timeout,
        # A replica no node has room for fails before the deploy's own deadline,
        # with a sentence that says so instead of a bare timeout.
        schedule_timeout=settings.deploy_timeout * 0.75,
        preflight=files_every_node_reads(settings.tracking_uri),
        store=store,
    )


async def free_ports(placement: Placement) -> int:
    """`GET /get_number_free_ports`: how many more backends fit.

    Locally, the ports of the range nobody holds. On Ray, where every node picks
    a port of its own, the replicas of the default size (one CPU) that the
    cluster's free CPUs hold now (0 while the cluster cannot be reached).
    """
    if isinstance(placement, LocalPlacement):
        return await placement.count_free_ports()
    free_slots = getattr(placement, "free_slots", None)
    return int(await free_slots()) if free_slots is not None else 0


def files_every_node_reads(tracking_uri: str) -> Callable[[DeploymentRecord, int], Awaitable[None]]:
    """A check run before each start on Ray: can every node read the model?

    On a cluster of more than one node, a tracking URI or model artifacts that
    are files on the gateway's host would work on this host only; the deploy is
    refused with a sentence that says what to set instead.
    """
    served: set[tuple[str, str]] = set()  # versions found served over the network

    async def check(record: DeploymentRecord, nodes: int) -> None:
        if nodes <= 1:
            return
        if _is_local(tracking_uri):
            raise ValueError(
                f"MLFLOW_TRACKING_URI ({tracking_uri}) is a file on the gateway's host,"
                f" which the other nodes of the {nodes}-node Ray cluster cannot read: set"
                " MLFLOW_TRACKING_URI to an `mlflow server` that every node can reach,"
                " started with --serve-artifacts"
            )
        version = (record.model_name, record.version)
        if version in served:
            return
        where = await asyncio.to_thread(_download_uri, tracking_uri, *version)
        if _is_local(where):
            raise ValueError(
                f"the files of {record.model_name} version {record.version} are at {where},"
                " on one host, which the other nodes of the Ray cluster cannot read: run"
                " the `mlflow server` with --serve-artifacts and register the model"
                " through it, so its files are served over HTTP"
            )
        served.add(version)

    return check


def _download_uri(tracking_uri: str, name: str, version: str) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return str(client.get_model_version_download_uri(name, version))


def _is_local(uri: str) -> bool:
    """A file of this host: a plain path, file: or sqlite: (a one-letter scheme is a drive)."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file", "sqlite") or len(scheme) == 1
