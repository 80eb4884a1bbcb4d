"""The management API: registry browsing, deploy, undeploy and status.

Paths are the original's, so existing scripts keep working.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from supervisor.ports import DeploymentRecord

from .baselines import capture_baseline
from .errors import BadRequest, DeploymentNotFound
from .keys import INFERENCE_LOG, MANAGER, METRICS, REGISTRY, ROUTES, SETTINGS, STATE_STORE
from .launchers import ENV_MANAGERS
from .names import check_model_name, check_version, deployment_key
from .params import int_query, resolve_key, single_query

logger = logging.getLogger(__name__)

MAX_REPLICAS = 16


async def health(request: web.Request) -> web.Response:
    table = request.app[ROUTES]
    log = request.app[INFERENCE_LOG]
    body: dict[str, object] = {
        "status": "ok",
        "deployments": len(table),
        "running": sum(1 for d in table.values() if d.pick() is not None),
        "inference_log": None if log is None else {"pending": log.depth, **vars(log.stats)},
    }
    return web.json_response(body)


async def get_model_list(request: web.Request) -> web.Response:
    return web.json_response(await request.app[REGISTRY].list_models())


async def get_model_version_list(request: web.Request) -> web.Response:
    name = check_model_name(request.match_info["model"])
    return web.json_response(await request.app[REGISTRY].list_versions(name))


async def get_signature(request: web.Request) -> web.Response:
    name, version = resolve_key(request, request.match_info["key"])
    return web.json_response(await request.app[REGISTRY].signature(name, version))


async def get_type_mapping(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        request.app[SETTINGS].type_mapping_path, headers={"Content-Type": "application/json"}
    )


async def deploy(request: web.Request) -> web.Response:
    """POST /deploy/{model}/{version}: 201 when started, 200 when already deployed."""
    name = check_model_name(request.match_info["model"])
    version = check_version(request.match_info["version"])
    env_manager = single_query(request, "env_manager") or "local"
    if env_manager not in ENV_MANAGERS:
        raise BadRequest(f"env_manager must be one of {', '.join(ENV_MANAGERS)}")
    replicas = int_query(request, "replicas", 1, 1, MAX_REPLICAS)
    key = deployment_key(name, version)
    manager = request.app[MANAGER]

    existing = manager.table.get(key)
    if existing is None:
        info = await request.app[REGISTRY].resolve(name, version)
        record = DeploymentRecord(
            key=key, model_name=name, version=version, run_uuid=info.run_id,
            env_manager=env_manager, created_at=time.time(),
        )  # fmt: skip
        started = time.monotonic()
        deployment, created = await manager.deploy(record, replicas=replicas)
        if created:
            request.app[METRICS].deploy_duration.labels(key).set(time.monotonic() - started)
            await capture_baseline(request.app, name, version, info.run_id)
    else:
        deployment, created = existing, False
    view = deployment.describe()
    body = {
        "key": key,
        "model_name": name,
        "version": version,
        "port": view["port"],
        "run_uuid": view["run_uuid"],
        "status": view["status"],
        "replicas": view["replicas"],
        "message": (
            f"deployed {key}: POST /{key} to call it"
            if created
            else f"{key} is already deployed; nothing was started"
        ),
    }
    return web.json_response(body, status=201 if created else 200)


async def undeploy(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    manager = request.app[MANAGER]
    if key not in manager.table:
        raise DeploymentNotFound(f"{key!r} is not deployed")
    deployment = await manager.undeploy(key)
    request.app[METRICS].forget(key)
    ports = [r.port for r in deployment.replicas]
    return web.json_response(
        {"key": key, "status": "undeployed", "freed_ports": ports,
         "message": f"undeployed {key}; freed port(s) {', '.join(map(str, ports))}"}
    )  # fmt: skip


async def get_deployed_models(request: web.Request) -> web.Response:
    table = request.app[ROUTES]
    return web.json_response({key: d.describe() for key, d in table.items()})


async def get_number_free_ports(request: web.Request) -> web.Response:
    return web.json_response(await request.app[STATE_STORE].count_free_ports())


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/health", health)
    r.add_get("/get_model_list", get_model_list)
    r.add_get("/get_model_version_list/{model}", get_model_version_list)
    r.add_get("/model/{key}/signature", get_signature)
    r.add_get("/type_mapping", get_type_mapping)
    r.add_post("/deploy/{model}/{version}", deploy)
    r.add_post("/undeploy/{key}", undeploy)
    r.add_get("/get_deployed_models", get_deployed_models)
    r.add_get("/get_number_free_ports", get_number_free_ports)
