"""GET /logs/{key}: the recent output of a deployment's backends, for operators.

Read through each replica's placement handle, so it works wherever the backend
runs; bounded in lines (and by the handle in bytes), so one call can never ship
a whole log file. Admin only: a backend's output can show paths and inputs.
"""

from __future__ import annotations

from aiohttp import web

from gateway.app_keys import ROUTES
from gateway.deploy.options import MAX_REPLICAS
from gateway.edge.params import int_query, single_query
from gateway.errors import DeploymentNotFound, GatewayError
from supervisor.deployment import Replica

DEFAULT_LINES = 100
MAX_LINES = 1000


class ReplicaNotFound(GatewayError):
    status, code = 404, "replica_not_found"


def _replica_query(request: web.Request) -> int | None:
    if not single_query(request, "replica"):
        return None
    return int_query(request, "replica", 0, 0, MAX_REPLICAS - 1)


async def _entry(replica: Replica, lines: int) -> dict[str, object]:
    handle = replica.handle
    # A replica that never started (or is between two starts) has no output to show.
    text = await handle.log_tail(lines) if handle is not None else ""
    return {
        "replica": replica.index,
        "node": replica.node,
        "status": replica.state.value,
        "log": text,
    }


async def backend_logs(request: web.Request) -> web.Response:
    """GET /logs/{key}?replica=&lines=: the last `lines` lines of each (or one) replica."""
    key = request.match_info["key"]
    lines = int_query(request, "lines", DEFAULT_LINES, 1, MAX_LINES)
    wanted = _replica_query(request)
    deployment = request.app[ROUTES].get(key)
    if deployment is None:
        raise DeploymentNotFound(f"{key!r} is not deployed")
    # One snapshot of the list: a scale or replace swaps it whole while we read.
    replicas = list(deployment.replicas)
    if wanted is not None:
        replicas = [r for r in replicas if r.index == wanted]
        if not replicas:
            known = ", ".join(str(r.index) for r in deployment.replicas) or "none"
            raise ReplicaNotFound(f"{key!r} has no replica {wanted}; its replicas: {known}")
    return web.json_response(
        {"key": key, "lines": lines, "replicas": [await _entry(r, lines) for r in replicas]}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/logs/{key}", backend_logs)
