"""The hot path: inference calls routed by exact key and relayed to a backend.

Per request this does one dict look-up, reads the body once, and sends the
bytes unchanged through `call_backend`; a successful answer's bytes come back
unchanged too (streamed when large). Nothing here blocks, parses a successful
body or awaits a store: the inference log takes a tuple and moves on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from aiohttp import hdrs, web
from multidict import istr

from gateway.app_keys import (
    ADMISSIONS,
    BATCHERS,
    DEPLOYER,
    INFERENCE_LOG,
    METRICS,
    ROUTER,
    ROUTES,
    SETTINGS,
    UPSTREAM,
)
from gateway.dataplane.admission import REQUEST_TIMEOUT_HEADER, Admission, deadline_of
from gateway.dataplane.backend_call import answer_headers, call_backend, request_header_lines
from gateway.dataplane.backend_errors import backend_error_response
from gateway.dataplane.routing import Route
from gateway.dataplane.upstream import UpstreamResponse
from gateway.edge.params import read_body
from gateway.edge.request_ids import request_id
from gateway.edge.telemetry import UNKNOWN_KEY, KeyMetrics
from gateway.errors import BackendTimeout, DeploymentNotFound, GatewayError, ModelNotReady
from supervisor.deployment import Deployment

MODEL_VERSION_HEADER = "X-Model-Version"
_REQUEST_TIMEOUT = istr(REQUEST_TIMEOUT_HEADER)  # case-folded once, not per call


def lookup(request: web.Request) -> Deployment:
    """The deployment named by the URL's key (an exact match), or a 404."""
    return deployment_of(request.app[ROUTES], request.match_info["key"])


def deployment_of(routes: dict[str, Deployment], key: str) -> Deployment:
    """The deployment named `key` (an exact match), or a 404."""
    deployment = routes.get(key)
    if deployment is None:
        raise DeploymentNotFound(
            f"no deployment named {key!r}; deploy it with POST /deploy/<model>/<version>"
        )
    return deployment


async def relay(request: web.Request, answer: UpstreamResponse) -> web.StreamResponse:
    """The caller's response for a backend answer: errors in our JSON shape, the rest as is.

    Every answer names the model version that produced it (`X-Model-Version`).
    """
    headers = answer_headers(answer)
    if answer.model_version is not None:
        headers.append((MODEL_VERSION_HEADER, answer.model_version))
    if not answer.streaming:
        if answer.status >= 400:
            keep_trace = request.app[SETTINGS].backend_stack_traces
            return backend_error_response(answer.status, headers, answer.body, keep_trace)
        # The response copies the pairs into its own CIMultiDict: none made here.
        return web.Response(status=answer.status, body=answer.body, headers=headers)
    response = web.StreamResponse(status=answer.status, headers=headers)
    try:
        await response.prepare(request)
        async for chunk in answer.iter_chunks():
            await response.write(chunk)
        await response.write_eof()
    finally:
        answer.finish()  # the caller went away mid-stream: release the call
    return response


class Answered(Protocol):
    """What a call's handler returns: its final status (a response, or what the lane sent)."""

    @property
    def status(self) -> int: ...


A = TypeVar("A", bound=Answered)
T = TypeVar("T")


@dataclass(slots=True)
class Call:
    """One scoring call as the backend gets it, whichever front end (aiohttp or the
    inference lane) read it: the bytes, the header lines, the id and the deadline asked."""

    body: bytes
    content_type: str
    header_lines: str
    request_id: str
    raw_timeout: str | None  # the caller's X-Request-Timeout, unparsed


def key_timing(app: web.Application, key: str) -> KeyMetrics | None:
    metrics = app.get(METRICS)
    if metrics is None:
        return None
    return metrics.for_key(key if key in app[ROUTES] else UNKNOWN_KEY)


async def timed(
    app: web.Application, key: str, work: Callable[[KeyMetrics | None], Awaitable[A]]
) -> A:
    """Run one inference call for `key`, counted in flight and timed by its final status."""
    timing = key_timing(app, key)
    started = time.perf_counter()
    status = 500
    if timing is not None:
        timing.in_flight.inc()
    try:
        answered = await work(timing)
        status = answered.status
        return answered
    except (GatewayError, web.HTTPException) as exc:
        status = exc.status
        raise
    finally:
        if timing is not None:
            timing.in_flight.dec()
            timing.done(status, time.perf_counter() - started)


async def wake(request: web.Request, deployment: Deployment) -> None:
    """A deployment scaled to zero is started again; the call is held until it is ready."""
    await wake_in(request.app, deployment)


async def wake_in(app: web.Application, deployment: Deployment) -> None:
    deployer = app.get(DEPLOYER)
    if deployer is not None:
        await deployer.wake(deployment)


async def serve(
    request: web.Request,
    deployment: Deployment,
    body: bytes,
    content_type: str,
    header_lines: str,
    timing: KeyMetrics | None,
    *,
    whole: bool = False,
) -> web.StreamResponse:
    """One MLflow scoring call for an aiohttp request: `serve_call`, relayed as a response."""
    call = Call(
        body, content_type, header_lines, request_id(request), request.headers.get(_REQUEST_TIMEOUT)
    )
    return await serve_call(request.app, deployment, call, timing, partial(relay, request), whole)


async def serve_call(
    app: web.Application,
    deployment: Deployment,
    call: Call,
    timing: KeyMetrics | None,
    deliver: Callable[[UpstreamResponse], Awaitable[T]],
    whole: bool = False,
) -> T:
    """One MLflow scoring call: through the batcher (if any) or straight to a backend.

    The answer goes to `deliver` (which sends it to the caller), and a success goes to
    the inference log with the scoring body it answered, before `deliver` sends a byte.
    `whole` asks for the answer held in memory, never streamed, for callers that
    translate it. A deployment with admission control, or a call with a deadline
    (`X-Request-Timeout`), takes the managed road.
    """
    if not deployment.replicas:
        await wake_in(app, deployment)
    admissions = app.get(ADMISSIONS)
    admission = admissions.get(deployment.key) if admissions else None
    if admission is not None or call.raw_timeout is not None:
        return await _serve_managed(app, deployment, admission, call, timing, deliver, whole)
    return await _serve(app, deployment, call, timing, deliver, whole)


async def _serve_managed(
    app: web.Application,
    deployment: Deployment,
    admission: Admission | None,
    call: Call,
    timing: KeyMetrics | None,
    deliver: Callable[[UpstreamResponse], Awaitable[T]],
    whole: bool,
) -> T:
    """`_serve` within the call's deadline, after taking an admission slot.

    The deadline covers the wait for a slot, the backend and the delivery; it is the
    caller's `X-Request-Timeout`, at most (and by default) GATEWAY_BACKEND_TIMEOUT.
    """
    deadline = deadline_of(call.raw_timeout, app[SETTINGS].backend_timeout)
    if admission is not None:
        await admission.enter(deadline)
    try:
        async with asyncio.timeout_at(deadline) as window:
            return await _serve(app, deployment, call, timing, deliver, whole)
    except TimeoutError:
        if not window.expired():
            raise
        raise BackendTimeout(
            f"the call's deadline ({REQUEST_TIMEOUT_HEADER}) passed before"
            f" {deployment.key} answered"
        ) from None
    finally:
        if admission is not None:
            admission.leave()


async def _serve(
    app: web.Application,
    deployment: Deployment,
    call: Call,
    timing: KeyMetrics | None,
    deliver: Callable[[UpstreamResponse], Awaitable[T]],
    whole: bool,
) -> T:
    answer: UpstreamResponse | None = None
    batcher = app[BATCHERS].get(deployment.key)
    if batcher is not None:
        answer = await batcher.submit(
            call.body, call.content_type, call.header_lines, call.request_id, timing
        )
    if answer is None:
        answer = await call_backend(
            app[UPSTREAM], deployment, "POST", "/invocations", call.header_lines, call.body,
            timing, whole=whole,
        )  # fmt: skip
    log = app[INFERENCE_LOG]
    if log is not None and 200 <= answer.status < 300:
        # Logged before any byte of the answer leaves, under the version that produced
        # it; a streamed (large) answer was never held whole: its inputs are logged alone.
        log.submit(
            deployment.record.model_name,
            answer.model_version or deployment.record.version,
            call.content_type,
            call.body,
            None if answer.streaming else answer.body,
            request_id=call.request_id,
        )
        if log.sync_each_call:  # GATEWAY_LOG_FSYNC=always: the answer waits for the disk
            try:
                await log.durable()
            except BaseException:
                if answer.streaming:
                    answer.finish()
                raise
    return await deliver(answer)


async def invoke(request: web.Request) -> web.StreamResponse:
    """POST /{key}, /{key}/invocations, /model/{key}: one prediction call."""
    return await timed(request.app, request.match_info["key"], partial(_invoke, request))


async def _invoke(request: web.Request, timing: KeyMetrics | None) -> web.StreamResponse:
    deployment = request.app[ROUTES].get(request.match_info["key"])
    if deployment is None:
        return await _invoke_routed(request, timing)
    body = await read_body(request)
    content_type = request.headers.get(hdrs.CONTENT_TYPE, "application/json")
    return await serve(
        request, deployment, body, content_type, request_header_lines(request), timing
    )


async def _invoke_routed(request: web.Request, timing: KeyMetrics | None) -> web.StreamResponse:
    """A call to a bare model name with a route: a version by weight, then the shadow."""
    route, deployment = pick_routed(request, request.match_info["key"])
    body = await read_body(request)
    content_type = request.headers.get(hdrs.CONTENT_TYPE, "application/json")
    return await serve_routed(
        request, route, deployment, body, content_type, request_header_lines(request), timing
    )


def pick_routed(request: web.Request, name: str) -> tuple[Route, Deployment]:
    """The route of the bare model name `name` and the deployment it picks for this call.

    A 404 when `name` has no route; a 503 when the picked version is gone.
    """
    router = request.app.get(ROUTER)
    route = router.routes.get(name) if router is not None else None
    if route is None:
        raise DeploymentNotFound(
            f"no deployment named {name!r}; deploy it with POST /deploy/<model>/<version>"
            f" (or route the bare name with PUT /route/{name})"
        )
    version = route.pick(request.headers)
    deployment = request.app[ROUTES].get(f"{name}-{version}")
    if deployment is None:
        raise ModelNotReady(
            f"the route of {name!r} sends this call to version {version}, which is no longer"
            " deployed: deploy it again or change the route",
            headers={"Retry-After": "5"},
        )
    return route, deployment


async def serve_routed(
    request: web.Request,
    route: Route,
    deployment: Deployment,
    body: bytes,
    content_type: str,
    header_lines: str,
    timing: KeyMetrics | None,
    *,
    whole: bool = False,
) -> web.StreamResponse:
    """`serve` on the version a route picked, counted for its comparison, then the shadow."""
    router = request.app[ROUTER]
    stats = router.stats(route.name, deployment.record.version, "primary")
    started = time.perf_counter()
    status = 500
    try:
        response = await serve(
            request, deployment, body, content_type, header_lines, timing, whole=whole
        )
        status = response.status
    except (GatewayError, web.HTTPException) as exc:
        status = exc.status
        raise
    finally:
        stats.add(status, time.perf_counter() - started)
    if route.shadow is not None and 200 <= status < 300:
        answer = response.body if isinstance(response, web.Response) else None
        router.shadow(
            route, request.app[UPSTREAM], request.app[INFERENCE_LOG], body, content_type,
            header_lines, answer if isinstance(answer, bytes) else None, request_id(request),
        )  # fmt: skip
    return response


async def backend_get(request: web.Request) -> web.StreamResponse:
    """GET /{key}/ping|health|version: the backend's own endpoints."""
    deployment = lookup(request)
    path = request.match_info["endpoint"]
    answer = await call_backend(
        request.app[UPSTREAM], deployment, "GET", f"/{path}", request_header_lines(request),
        None, None,
    )  # fmt: skip
    return await relay(request, answer)


def add_routes(app: web.Application) -> None:
    """Register the catch-all inference routes; call after every fixed route."""
    app.router.add_post("/model/{key}", invoke)
    app.router.add_get("/{key}/{endpoint:ping|health|version}", backend_get)
    app.router.add_post("/{key}/invocations", invoke)
    app.router.add_post("/{key}", invoke)
