"""The hot path: forward inference calls to a backend over the shared pool.

Per request this does one dict look-up, reads the body once, and sends the
bytes unchanged; the answer's bytes come back unchanged too (streamed when
large). Nothing here blocks, parses JSON or awaits a store.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from aiohttp import hdrs, web
from multidict import CIMultiDict

from gateway.app_keys import BATCHERS, INFERENCE_LOG, METRICS, ROUTES, UPSTREAM
from gateway.dataplane.upstream import UpstreamConnectError, UpstreamError, UpstreamPool
from gateway.edge.params import read_body
from gateway.edge.request_ids import request_id
from gateway.edge.telemetry import UNKNOWN_KEY, KeyMetrics
from gateway.errors import (
    BackendTimeout,
    BackendUnavailable,
    DeploymentNotFound,
    GatewayError,
    ModelNotReady,
)
from supervisor.deployment import Deployment, Replica

logger = logging.getLogger(__name__)


_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Date", "Server",
    )
)  # fmt: skip
_FORWARDED_REQUEST_HEADERS = (hdrs.CONTENT_TYPE, hdrs.ACCEPT, hdrs.CONTENT_ENCODING)


def lookup(request: web.Request) -> tuple[Deployment, Replica]:
    """The deployment named by the URL and the replica to send to, or a JSON error."""
    key = request.match_info["key"]
    deployment = request.app[ROUTES].get(key)
    if deployment is None:
        raise DeploymentNotFound(
            f"no deployment named {key!r}; deploy it with POST /deploy/<model>/<version>"
        )
    replica = deployment.pick()
    if replica is None:
        raise ModelNotReady(
            f"{key!r} is {deployment.status.value}: no backend is ready to serve it",
            headers={"Retry-After": "5"},
        )
    return deployment, replica


def _request_headers(request: web.Request) -> str:
    """The header lines sent to the backend: end-to-end ones, the id, X-Forwarded-For."""
    incoming = request.headers
    lines = [
        f"{name}: {incoming[name]}\r\n" for name in _FORWARDED_REQUEST_HEADERS if name in incoming
    ]
    remote = request.remote or ""
    previous = incoming.get(hdrs.X_FORWARDED_FOR)
    lines.append(f"X-Request-ID: {request_id(request)}\r\n")
    lines.append(f"X-Forwarded-For: {previous + ', ' + remote if previous else remote}\r\n")
    return "".join(lines)


@contextlib.contextmanager
def backend_errors(replica: Replica) -> Iterator[None]:
    """Map transport failures of a call to `replica` to 503/504 JSON errors."""
    try:
        yield
    except UpstreamConnectError as exc:
        raise BackendUnavailable(
            f"the backend on port {replica.port} refused the connection",
            headers={"Retry-After": "1"},
        ) from exc
    except TimeoutError as exc:
        raise BackendTimeout(f"the backend on port {replica.port} did not answer in time") from exc
    except UpstreamError as exc:
        raise BackendUnavailable(
            f"the backend on port {replica.port} failed mid-call: {exc}",
            headers={"Retry-After": "1"},
        ) from exc


async def post_bytes(
    pool: UpstreamPool, replica: Replica, body: bytes, content_type: str
) -> tuple[int, bytes, str]:
    """POST `body` to the replica's /invocations; (status, answer bytes, content type)."""
    replica.in_flight += 1
    try:
        with backend_errors(replica):
            answer = await pool.request(
                replica.host, replica.port, "POST", "/invocations",
                f"Content-Type: {content_type}\r\n", body,
            )  # fmt: skip
            payload = answer.body
            if answer.streaming:
                payload = b"".join([chunk async for chunk in answer.iter_chunks()])
    finally:
        replica.in_flight -= 1
    answer_type = next(
        (v for k, v in answer.headers if k.lower() == "content-type"), "application/json"
    )
    return answer.status, payload, answer_type


async def forward(
    request: web.Request,
    replica: Replica,
    method: str,
    path: str,
    body: bytes | None,
    timing: KeyMetrics | None = None,
) -> web.StreamResponse:
    """Send one call to `replica` and relay its answer; 503/504 on transport failure."""
    pool = request.app[UPSTREAM]
    replica.in_flight += 1
    started = time.perf_counter()
    try:
        with backend_errors(replica):
            answer = await pool.request(
                replica.host, replica.port, method, path, _request_headers(request), body
            )
            headers = CIMultiDict((k, v) for k, v in answer.headers if k.lower() not in _HOP_BY_HOP)
            if not answer.streaming:
                return web.Response(status=answer.status, body=answer.body, headers=headers)
            response = web.StreamResponse(status=answer.status, headers=headers)
            await response.prepare(request)
            async for chunk in answer.iter_chunks():
                await response.write(chunk)
            await response.write_eof()
            return response
    finally:
        replica.in_flight -= 1
        if timing is not None:
            timing.backend.observe(time.perf_counter() - started)


def _timing(request: web.Request, key: str) -> KeyMetrics | None:
    metrics = request.app.get(METRICS)
    if metrics is None:
        return None
    return metrics.for_key(key if key in request.app[ROUTES] else UNKNOWN_KEY)


async def invoke(request: web.Request) -> web.StreamResponse:
    """POST /{key}, /{key}/invocations, /model/{key}: one prediction call."""
    timing = _timing(request, request.match_info["key"])
    started = time.perf_counter()
    status = 500
    if timing is not None:
        timing.in_flight.inc()
    try:
        deployment, replica = lookup(request)
        body = await read_body(request)
        response: web.StreamResponse | None = None
        batcher = request.app[BATCHERS].get(deployment.key)
        if batcher is not None:
            response = await batcher.submit(
                body, request.headers.get(hdrs.CONTENT_TYPE, "application/json")
            )
        if response is None:
            response = await forward(request, replica, "POST", "/invocations", body, timing)
        status = response.status
        log = request.app[INFERENCE_LOG]
        if log is not None and 200 <= status < 300:
            # A streamed (large) answer was never held whole: its inputs are logged alone.
            answer = response.body if isinstance(response, web.Response) else None
            record = deployment.record
            log.submit(
                record.model_name,
                record.version,
                request.headers.get(hdrs.CONTENT_TYPE, "application/json"),
                body,
                answer if isinstance(answer, bytes) else None,
            )
        return response
    except (GatewayError, web.HTTPException) as exc:
        status = exc.status
        raise
    finally:
        if timing is not None:
            timing.in_flight.dec()
            timing.done(status, time.perf_counter() - started)


async def backend_get(request: web.Request) -> web.StreamResponse:
    """GET /{key}/ping|health|version: the backend's own endpoints."""
    _, replica = lookup(request)
    path = request.match_info["endpoint"]
    return await forward(request, replica, "GET", f"/{path}", None)


def add_routes(app: web.Application) -> None:
    """Register the catch-all inference routes; call after every fixed route."""
    app.router.add_post("/model/{key}", invoke)
    app.router.add_get("/{key}/{endpoint:ping|health|version}", backend_get)
    app.router.add_post("/{key}/invocations", invoke)
    app.router.add_post("/{key}", invoke)
