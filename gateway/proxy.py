"""The hot path: forward inference calls to a backend over the shared pool.

Per request this does one dict look-up, reads the body once, and sends the
bytes unchanged; the answer's bytes come back unchanged too (streamed when
large). Nothing here blocks, parses JSON or awaits a store.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import aiohttp
from aiohttp import hdrs, web

from supervisor.deployment import Deployment, Replica

from .errors import (
    BackendTimeout,
    BackendUnavailable,
    DeploymentNotFound,
    GatewayError,
    ModelNotReady,
)
from .keys import BATCHERS, CLIENT_SESSION, INFERENCE_LOG, METRICS, ROUTES
from .metrics import UNKNOWN_KEY, KeyMetrics
from .params import read_body
from .request_context import REQUEST_ID_HEADER, request_id

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Answers up to this size are read whole (one write back); larger ones stream.
STREAM_THRESHOLD = 1 << 20
STREAM_CHUNK = 1 << 16

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Date", "Server",
    )
)  # fmt: skip
_FORWARDED_REQUEST_HEADERS = (hdrs.CONTENT_TYPE, hdrs.ACCEPT, hdrs.CONTENT_ENCODING)


def new_client_session(
    max_connections: int, backend_timeout: float, per_backend: int = 0
) -> aiohttp.ClientSession:
    """The one pooled session every proxied call uses.

    `per_backend` caps the connections (so the calls in flight) to each backend;
    callers beyond it wait in the pool's queue, in order.
    """
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=per_backend,
        # Below uvicorn's 5 s keep-alive, so we drop an idle connection before the
        # backend does and rarely race its close.
        keepalive_timeout=4.0,
        ttl_dns_cache=None,
        use_dns_cache=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0, sock_read=backend_timeout),
        auto_decompress=False,
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT_ENCODING, hdrs.ACCEPT),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


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


def _request_headers(request: web.Request) -> dict[str, str]:
    incoming = request.headers
    headers = {name: incoming[name] for name in _FORWARDED_REQUEST_HEADERS if name in incoming}
    headers[REQUEST_ID_HEADER] = request_id(request)
    remote = request.remote or ""
    previous = incoming.get(hdrs.X_FORWARDED_FOR)
    headers[hdrs.X_FORWARDED_FOR] = f"{previous}, {remote}" if previous else remote
    return headers


@contextlib.contextmanager
def backend_errors(replica: Replica) -> Iterator[None]:
    """Map transport failures of a call to `replica` to 503/504 JSON errors."""
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        raise BackendUnavailable(
            f"the backend on port {replica.port} refused the connection: {exc.os_error}",
            headers={"Retry-After": "1"},
        ) from exc
    except TimeoutError as exc:
        raise BackendTimeout(f"the backend on port {replica.port} did not answer in time") from exc
    except aiohttp.ClientError as exc:
        raise BackendUnavailable(
            f"the backend on port {replica.port} failed mid-call: {exc!r}",
            headers={"Retry-After": "1"},
        ) from exc


async def _once_more_if_dropped(call: Callable[[], Awaitable[T]]) -> T:
    """Run `call`; again once if a pooled keep-alive connection was closed under it.

    The backend closed an idle connection just as we reused it: no answer was
    started, so one retry is safe (a prediction has no side effect).
    """
    try:
        return await call()
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise
        return await call()


async def post_bytes(
    session: aiohttp.ClientSession, replica: Replica, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes, str]:
    """POST `body` to the replica's /invocations; (status, answer bytes, content type)."""

    async def call() -> tuple[int, bytes, str]:
        async with session.post(replica.invocations_url, data=body, headers=headers) as resp:
            payload = await resp.read()
            return resp.status, payload, resp.headers.get(hdrs.CONTENT_TYPE, "application/json")

    replica.in_flight += 1
    try:
        with backend_errors(replica):
            return await _once_more_if_dropped(call)
    finally:
        replica.in_flight -= 1


async def forward(
    request: web.Request,
    replica: Replica,
    method: str,
    url: str,
    body: bytes | None,
    timing: KeyMetrics | None = None,
) -> web.StreamResponse:
    """Send one call to `replica` and relay its answer; 503/504 on transport failure."""
    session = request.app[CLIENT_SESSION]
    headers = _request_headers(request)
    replica.in_flight += 1
    started = time.perf_counter()
    try:
        with backend_errors(replica):
            return await _once_more_if_dropped(
                lambda: _exchange(request, session, method, url, body, headers)
            )
    finally:
        replica.in_flight -= 1
        if timing is not None:
            timing.backend.observe(time.perf_counter() - started)


async def _exchange(
    request: web.Request,
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    async with session.request(method, url, data=body, headers=headers) as upstream:
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        length = upstream.content_length
        if length is not None and length <= STREAM_THRESHOLD:
            payload = await upstream.read()
            return web.Response(status=upstream.status, body=payload, headers=out_headers)
        response = web.StreamResponse(status=upstream.status, headers=out_headers)
        if length is not None:
            response.content_length = length
        await response.prepare(request)
        async for chunk in upstream.content.iter_chunked(STREAM_CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response


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
            response = await forward(
                request, replica, "POST", replica.invocations_url, body, timing
            )
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
    return await forward(request, replica, "GET", f"{replica.base_url}/{path}", None)


def add_routes(app: web.Application) -> None:
    """Register the catch-all inference routes; call after every fixed route."""
    app.router.add_post("/model/{key}", invoke)
    app.router.add_get("/{key}/{endpoint:ping|health|version}", backend_get)
    app.router.add_post("/{key}/invocations", invoke)
    app.router.add_post("/{key}", invoke)
