"""The Open Inference Protocol (KServe V2 REST) in front of the deployed MLflow models.

Health, server and model metadata, readiness and inference, so clients such as
`tritonclient` can call an MLflow model. `/v2/models/{model}/versions/{version}`
is the deployment key `{model}-{version}`; `/v2/models/{name}` is a deployed key
as it stands (`{model}-{version}`, `{model}@{alias}`). An inference call is
translated to an MLflow scoring body (gateway/dataplane/v2_protocol.py) and goes
through the same serving path as `POST /{key}`: batched, logged and timed like
any other call. Errors come in the protocol's shape, `{"error": "<code>: <detail>"}`,
with our `detail` beside it.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

from aiohttp import web

from gateway import __version__
from gateway.app_keys import REGISTRY, ROUTER, ROUTES
from gateway.dataplane import proxy
from gateway.dataplane.backend_call import request_header_lines
from gateway.dataplane.routing import Route
from gateway.dataplane.v2_answers import v2_answer
from gateway.dataplane.v2_protocol import (
    EXTENSIONS,
    InferRequest,
    ModelSpec,
    model_metadata,
    spec_from_signature,
    translate_request,
)
from gateway.deploy.registry import Registry
from gateway.edge.params import read_body, resolve_key
from gateway.edge.telemetry import KeyMetrics
from gateway.errors import DeploymentNotFound, GatewayError, ModelNotReady
from supervisor.deployment import Deployment

HEADER_LENGTH = "Inference-Header-Content-Length"
# Larger bodies and answers are translated in a worker thread, never on the event loop.
OFFLOAD_BYTES = 64 * 1024
_JSON = "application/json"
_REQUEST_ID_LINE = "X-Request-ID: "


class SpecCache:
    """Signatures by (model, version): a version never changes, so each is read once.

    Concurrent first look-ups of one version share one registry call; a failed
    look-up (unknown version, registry down) is not kept.
    """

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], ModelSpec] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[ModelSpec]] = {}

    async def get(self, registry: Registry, name: str, version: str) -> ModelSpec:
        key = (name, version)
        spec = self._specs.get(key)
        if spec is not None:
            return spec
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ModelSpec] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_mark_retrieved)
        self._pending[key] = future
        try:
            spec = spec_from_signature(await registry.signature(name, version))
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        finally:
            del self._pending[key]
        self._specs[key] = spec
        future.set_result(spec)
        return spec


def _mark_retrieved(future: asyncio.Future[ModelSpec]) -> None:
    # Nobody else may be waiting: the leader already raised the error to its caller.
    if not future.cancelled():
        future.exception()


SPECS = web.AppKey("v2_specs", SpecCache)


def v2_error(exc: GatewayError) -> web.Response:
    """The protocol's error shape: clients show `error` to people, so it carries the detail."""
    body = {"error": f"{exc.code}: {exc.detail}", "detail": exc.detail}
    return web.Response(
        status=exc.status, body=json.dumps(body).encode(), content_type=_JSON, headers=exc.headers
    )


def _key(request: web.Request) -> str:
    name = request.match_info["name"]
    version = request.match_info.get("version")
    return name if version is None else f"{name}-{version}"


def _deployment(request: web.Request, key: str) -> Deployment:
    deployment = request.app[ROUTES].get(key)
    if deployment is None:
        raise DeploymentNotFound(
            f"no deployment named {key!r}; deploy it with POST /deploy/<model>/<version> and"
            " call /v2/models/<model>/versions/<version> or /v2/models/<key>"
        )
    return deployment


# ------------------------------------------------------------ health, metadata


async def live(request: web.Request) -> web.Response:
    """GET /v2/health/live: the gateway answers."""
    return web.json_response({"live": True})


async def server_ready(request: web.Request) -> web.Response:
    """GET /v2/health/ready: every deployed model can serve (the protocol's definition)."""
    waiting = sorted(key for key, d in request.app[ROUTES].items() if d.pick() is None)
    if waiting:
        return v2_error(
            ModelNotReady(f"not every model is ready: {', '.join(waiting)} cannot serve yet")
        )
    return web.json_response({"ready": True})


async def server_metadata(request: web.Request) -> web.Response:
    """GET /v2: the server's name, version and protocol extensions."""
    return web.json_response(
        {"name": "modelgw", "version": __version__, "extensions": list(EXTENSIONS)}
    )


async def model_metadata_handler(request: web.Request) -> web.Response:
    """GET /v2/models/{name}[/versions/{version}]: tensors from the MLflow signature."""
    try:
        key = _key(request)
        route = _route(request, key)
        if route is not None:  # the version that takes most of the bare name's calls
            name, version = key, max(route.versions, key=route.versions.__getitem__)
        else:
            name, version = resolve_key(request, key)
        spec = await request.app[SPECS].get(request.app[REGISTRY], name, version)
    except GatewayError as exc:
        return v2_error(exc)
    return web.json_response(model_metadata(spec, name, version))


async def model_ready(request: web.Request) -> web.Response:
    """GET /v2/models/{name}[/versions/{version}]/ready: a backend of it can serve now."""
    key = _key(request)
    route = _route(request, key)
    try:
        if route is not None:  # a routed bare name: every version it may pick
            keys = [f"{key}-{v}" for v, weight in route.versions.items() if weight > 0]
            deployments = [_deployment(request, k) for k in keys]
        else:
            deployments = [_deployment(request, key)]
        for deployment in deployments:
            if deployment.pick() is None:
                raise ModelNotReady(
                    f"{deployment.key!r} is {deployment.status.value}: no backend can serve it"
                )
    except GatewayError as exc:
        return v2_error(exc)
    if route is not None:
        return web.json_response({"name": key, "ready": True})
    record = deployments[0].record
    return web.json_response({"name": record.model_name, "version": record.version, "ready": True})


# ------------------------------------------------------------------ inference


async def infer(request: web.Request) -> web.StreamResponse:
    """POST /v2/models/{name}[/versions/{version}]/infer."""
    key = _key(request)
    return await proxy.timed(request.app, key, partial(_infer, request, key))


async def _infer(request: web.Request, key: str, timing: KeyMetrics | None) -> web.StreamResponse:
    try:
        route, deployment = _target(request, key)
        raw = await read_body(request)
        record = deployment.record
        spec = await request.app[SPECS].get(
            request.app[REGISTRY], record.model_name, record.version
        )
        header_length = request.headers.get(HEADER_LENGTH)
        if len(raw) > OFFLOAD_BYTES:
            parsed, body = await asyncio.to_thread(translate_request, raw, header_length, spec)
        else:
            parsed, body = translate_request(raw, header_length, spec)
        lines = _header_lines(request)
        if route is None:
            response = await proxy.serve(
                request, deployment, body, _JSON, lines, timing, whole=True
            )
        else:
            response = await proxy.serve_routed(
                request, route, deployment, body, _JSON, lines, timing, whole=True
            )
        if response.status >= 300 or not isinstance(response, web.Response):
            return _v2_backend_error(response)
        return await _answer(response, parsed, spec, record.model_name, record.version)
    except GatewayError as exc:
        return v2_error(exc)


def _route(request: web.Request, key: str) -> Route | None:
    """The route of `key` when it is a bare model name with one (and no deployed key)."""
    if key in request.app[ROUTES] or "version" in request.match_info:
        return None
    router = request.app.get(ROUTER)
    return router.routes.get(key) if router is not None else None


def _target(request: web.Request, key: str) -> tuple[Route | None, Deployment]:
    """The deployment a call to `key` goes to: the key itself, or a bare model name's route."""
    if _route(request, key) is not None:
        return proxy.pick_routed(request, key)
    return None, _deployment(request, key)


def _header_lines(request: web.Request) -> str:
    """The backend call's header lines: ours for the JSON body, the caller's id and address.

    `request_header_lines` puts the caller's content headers first and the request id
    after them: those describe the V2 body, not the JSON sent on, so they are cut off.
    """
    lines = request_header_lines(request)
    return f"Content-Type: {_JSON}\r\n{lines[lines.index(_REQUEST_ID_LINE) :]}"


async def _answer(response: web.Response, parsed: InferRequest, spec: ModelSpec,
                  model_name: str, version: str) -> web.Response:  # fmt: skip
    answer = response.body
    assert isinstance(answer, bytes)  # relay() holds a whole answer as bytes
    if len(answer) > OFFLOAD_BYTES:
        body, header_length = await asyncio.to_thread(
            v2_answer, answer, parsed, spec, model_name, version
        )
    else:
        body, header_length = v2_answer(answer, parsed, spec, model_name, version)
    # The backend's other answer headers (the serving version, ...) pass on.
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _REPLACED}
    if header_length is None:
        return web.Response(body=body, content_type=_JSON, headers=headers)
    headers[HEADER_LENGTH] = str(header_length)
    return web.Response(body=body, content_type="application/octet-stream", headers=headers)


_REPLACED = frozenset({"content-type", "content-length", "content-encoding"})


def _v2_backend_error(response: web.StreamResponse) -> web.StreamResponse:
    """A backend error, already in our JSON shape, with the protocol's `error` message."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    try:
        doc: Any = json.loads(response.body)
    except ValueError:
        return response
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        doc["error"] = f"{doc['error']}: {doc.get('detail', '')}"
        response.body = json.dumps(doc).encode()
    return response


def add_routes(app: web.Application) -> None:
    """Register the V2 routes; call before the proxy's catch-all key routes."""
    app[SPECS] = SpecCache()
    r = app.router
    r.add_get("/v2", server_metadata)
    r.add_get("/v2/health/live", live)
    r.add_get("/v2/health/ready", server_ready)
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        r.add_get(model, model_metadata_handler)
        r.add_get(f"{model}/ready", model_ready)
        r.add_post(f"{model}/infer", infer)
