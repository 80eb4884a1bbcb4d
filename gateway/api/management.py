"""The management API: registry browsing, deploy, undeploy and status.

Paths are the original's, so existing scripts keep working.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gateway.app_keys import DEPLOYER, INFERENCE_LOG, PLACEMENT, REGISTRY, ROUTES, SETTINGS
from gateway.deploy.options import (
    DEFAULT_BATCH_DELAY_MS,
    ENV_MANAGERS,
    MAX_BATCH_DELAY_MS,
    MAX_BATCH_SIZE,
    MAX_CONCURRENCY,
    MAX_IDLE_TIMEOUT_S,
    MAX_MEMORY_MB,
    MAX_QUEUE,
    MAX_REPLICAS,
    DeployRequest,
    parse_num_cpus,
    parse_resources,
)
from gateway.deploy.placement import free_ports
from gateway.edge.names import check_alias, check_model_name, check_version
from gateway.edge.params import int_query, resolve_key, single_query
from gateway.errors import BadRequest, DeploymentNotFound
from supervisor.deployment import Deployment
from supervisor.manager import is_idle

logger = logging.getLogger(__name__)


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


def _batching_options(request: web.Request) -> dict[str, int]:
    """`max_batch_size` / `max_batch_delay_ms` from the query, when given."""
    options: dict[str, int] = {}
    if single_query(request, "max_batch_size") is not None:
        options["max_batch_size"] = int_query(request, "max_batch_size", 1, 1, MAX_BATCH_SIZE)
    if single_query(request, "max_batch_delay_ms") is not None:
        options["max_batch_delay_ms"] = int_query(
            request, "max_batch_delay_ms", DEFAULT_BATCH_DELAY_MS, 0, MAX_BATCH_DELAY_MS
        )
    return options


def _traffic_options(request: web.Request) -> dict[str, int]:
    """`max_concurrency` / `max_queue` / `idle_timeout_s` from the query, when given (0: off)."""
    limits = {"max_concurrency": MAX_CONCURRENCY, "max_queue": MAX_QUEUE,
              "idle_timeout_s": MAX_IDLE_TIMEOUT_S}  # fmt: skip
    return {
        name: int_query(request, name, 0, 0, most)
        for name, most in limits.items()
        if single_query(request, name) is not None
    }


def _bool_query(request: web.Request, name: str) -> bool:
    raw = single_query(request, name)
    if raw is None or raw.lower() in ("", "0", "false", "no"):
        return False
    if raw.lower() in ("1", "true", "yes"):
        return True
    raise BadRequest(f"query parameter {name!r} must be true or false")


def _deploy_body(deployment: Deployment, message: str) -> dict[str, object]:
    view = deployment.describe()
    record = deployment.record
    return {
        "key": record.key, "model_name": record.model_name, "version": record.version,
        "port": view["port"], "run_uuid": view["run_uuid"],
        "status": "idle" if is_idle(deployment) else view["status"],
        "replicas": view["replicas"], "options": record.options, "message": message,
    }  # fmt: skip


def _deploy_request(request: web.Request) -> DeployRequest:
    name, version, alias = _model_ref(request)
    env_manager = single_query(request, "env_manager")
    if env_manager is not None and env_manager not in ENV_MANAGERS:
        raise BadRequest(f"env_manager must be one of {', '.join(ENV_MANAGERS)}")
    replicas = None
    if single_query(request, "replicas") is not None:
        replicas = int_query(request, "replicas", 1, 1, MAX_REPLICAS)
    return DeployRequest(
        name=name,
        version=version,
        alias=alias,
        env_manager=env_manager,
        replicas=replicas,
        replace=_bool_query(request, "replace"),
        batching=_batching_options(request),
        resources=_resource_options(request),
        traffic=_traffic_options(request),
    )


def _resource_options(request: web.Request) -> dict[str, Any]:
    """`num_cpus` / `memory_mb` / `resources`: what a replica reserves on a Ray node."""
    options: dict[str, Any] = {}
    try:
        if (raw := single_query(request, "num_cpus")) is not None:
            options["num_cpus"] = parse_num_cpus(raw)
        if (raw := single_query(request, "resources")) is not None:
            options["resources"] = parse_resources(raw)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if single_query(request, "memory_mb") is not None:
        options["memory_mb"] = int_query(request, "memory_mb", 0, 1, MAX_MEMORY_MB)
    if options and request.app[SETTINGS].placement != "ray":
        raise BadRequest(
            f"{', '.join(options)} reserve room on a Ray cluster's nodes, but this gateway"
            " runs its backends on its own host: set GATEWAY_PLACEMENT=ray (and RAY_ADDRESS)"
            " to place them on a cluster"
        )
    return options


def _model_ref(request: web.Request) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of `/deploy/{model}/{version}` or `/deploy/{model}@{alias}`."""
    if "ref" not in request.match_info:
        return (check_model_name(request.match_info["model"]),
                check_version(request.match_info["version"]), None)  # fmt: skip
    name, at, alias = request.match_info["ref"].rpartition("@")
    if not at:
        raise BadRequest(
            "deploy a version with /deploy/<model>/<version> or an alias with"
            " /deploy/<model>@<alias>"
        )
    return check_model_name(name), None, check_alias(alias)


async def deploy(request: web.Request) -> web.Response:
    """POST /deploy/{model}/{version} or /deploy/{model}@{alias}: 201 when started,
    200 when already deployed. An alias deployment follows its alias.

    Answers once the deployment is ready (or failed), within the deploy timeout.
    `replace=true` on a deployed key starts new backends, switches to them once
    ready and drains the old ones; replicas and batching options on a deployed
    key are applied in place.
    """
    outcome = await request.app[DEPLOYER].deploy(_deploy_request(request))
    return web.json_response(
        _deploy_body(outcome.deployment, outcome.message), status=201 if outcome.created else 200
    )


async def scale(request: web.Request) -> web.Response:
    """POST /scale/{key}?replicas=N: change the number of backends live."""
    key = request.match_info["key"]
    if single_query(request, "replicas") is None:
        raise BadRequest("give the new replica count as ?replicas=N")
    replicas = int_query(request, "replicas", 1, 1, MAX_REPLICAS)
    deployer = request.app[DEPLOYER]
    if key not in deployer.table:
        raise DeploymentNotFound(f"{key!r} is not deployed")
    deployment = await deployer.scale(key, replicas)
    return web.json_response(_deploy_body(deployment, f"{key} runs {replicas} replica(s)"))


async def undeploy(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    deployer = request.app[DEPLOYER]
    if key not in deployer.table:
        raise DeploymentNotFound(f"{key!r} is not deployed")
    deployment = await deployer.undeploy(key)
    ports = [r.port for r in deployment.replicas]
    return web.json_response(
        {"key": key, "status": "undeployed", "freed_ports": ports,
         "message": f"undeployed {key}; freed port(s) {', '.join(map(str, ports))}"}
    )  # fmt: skip


async def get_deployed_models(request: web.Request) -> web.Response:
    return web.json_response(request.app[DEPLOYER].describe())


async def get_number_free_ports(request: web.Request) -> web.Response:
    return web.json_response(await free_ports(request.app[PLACEMENT]))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/health", health)
    r.add_get("/get_model_list", get_model_list)
    r.add_get("/get_model_version_list/{model}", get_model_version_list)
    r.add_get("/model/{key}/signature", get_signature)
    r.add_get("/type_mapping", get_type_mapping)
    r.add_post("/deploy/{model}/{version}", deploy)
    r.add_post("/deploy/{ref}", deploy)
    r.add_post("/undeploy/{key}", undeploy)
    r.add_post("/scale/{key}", scale)
    r.add_get("/get_deployed_models", get_deployed_models)
    r.add_get("/get_number_free_ports", get_number_free_ports)
