"""The one road from the gateway to a backend.

Direct calls, batched calls and the data API's predictions all go through
`call_backend`: it picks the replica, sends the caller's id and address along,
counts the call in flight (and each answer, a sign of life for liveness), times
it into the backend-latency histogram, sends it once to another replica when
its own died or hung before answering, and maps transport failures to 503/504
JSON errors. Nothing else talks to a backend (the supervisor's probes excepted:
they have their own small pool).
"""

from __future__ import annotations

import logging
import time

from aiohttp import hdrs, web

from gateway.dataplane.upstream import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamUnanswered,
)
from gateway.edge.request_ids import request_id
from gateway.edge.telemetry import KeyMetrics
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError, ModelNotReady
from supervisor.deployment import Deployment, Replica

logger = logging.getLogger(__name__)

# End-to-end request headers a backend needs; everything else stays at the edge.
# Not Content-Encoding: aiohttp has already decoded a compressed body, so the bytes we
# send are plain and the header would make the backend decode them again.
FORWARDED_REQUEST_HEADERS = (hdrs.CONTENT_TYPE, hdrs.ACCEPT)


def request_header_lines(request: web.Request) -> str:
    """The header lines an aiohttp request carries to the backend (`header_lines`)."""
    incoming = request.headers
    return header_lines(
        incoming.get(hdrs.CONTENT_TYPE), incoming.get(hdrs.ACCEPT),
        incoming.get(hdrs.X_FORWARDED_FOR), request.remote or "", request_id(request),
    )  # fmt: skip


def header_lines(
    content_type: str | None, accept: str | None, forwarded_for: str | None, remote: str, rid: str
) -> str:
    """The header lines a caller's call carries to the backend.

    End-to-end headers the backend needs (FORWARDED_REQUEST_HEADERS), the request id,
    and X-Forwarded-For extended with the caller's address.
    """
    lines = ""
    if content_type is not None:
        lines = f"{hdrs.CONTENT_TYPE}: {content_type}\r\n"
    if accept is not None:
        lines += f"{hdrs.ACCEPT}: {accept}\r\n"
    return (
        f"{lines}X-Request-ID: {rid}\r\n"
        f"X-Forwarded-For: {forwarded_for + ', ' + remote if forwarded_for else remote}\r\n"
    )


def answer_headers(answer: UpstreamResponse) -> list[tuple[str, str]]:
    """The backend's answer headers that pass to the caller, in a list of the caller's own
    (the pool's parser has already dropped the hop-by-hop ones)."""
    return list(answer.headers)


def transport_error(replica: Replica, exc: UpstreamError | TimeoutError) -> GatewayError:
    """The 503/504 JSON error for a transport failure of a call to `replica`."""
    where = f"the backend at {replica.host}:{replica.port}"
    if isinstance(exc, UpstreamConnectError):
        return BackendUnavailable(f"{where} refused the connection", headers={"Retry-After": "1"})
    if isinstance(exc, TimeoutError):  # a connect timeout included: the backend is slow, not gone
        return BackendTimeout(f"{where} did not answer in time: {exc}")
    if isinstance(exc, UpstreamUnanswered):
        return BackendUnavailable(
            f"{where} failed before answering: {exc}", headers={"Retry-After": "1"}
        )
    return BackendUnavailable(f"{where} failed mid-call: {exc}", headers={"Retry-After": "1"})


def may_resend(pool: UpstreamPool, exc: UpstreamError) -> bool:
    """Whether a call that failed on one replica may be sent to another.

    Always when the connection was refused (nothing reached the backend); when the
    request went out but no answer byte came back (the backend died or hung), only if
    the launcher says its backends are side-effect free (`UpstreamPool.resend_dropped`).
    """
    if isinstance(exc, UpstreamConnectError):
        return True
    return isinstance(exc, UpstreamUnanswered) and pool.resend_dropped


def pick_replica(deployment: Deployment) -> Replica:
    """The replica to send to, or a 503 that says why there is none."""
    replica = deployment.pick()
    if replica is None:
        raise ModelNotReady(
            f"{deployment.key!r} is {deployment.status.value}: no backend is ready to serve it",
            headers={"Retry-After": "5"},
        )
    return replica


async def call_backend(
    pool: UpstreamPool,
    deployment: Deployment,
    method: str,
    path: str,
    header_lines: str,
    body: bytes | None,
    timing: KeyMetrics | None,
    *,
    whole: bool = False,
) -> UpstreamResponse:
    """Send one call to a replica of `deployment` and return its answer.

    A large answer comes back streaming: the call stays counted in flight (and
    its latency open) until the caller has read it, unless `whole` asks for the
    body read here. A call whose replica died or hung before answering is sent
    once to another ready replica when `may_resend` allows it. Transport failures
    raise 503/504 `GatewayError`s.
    """
    replica = pick_replica(deployment)
    # Read with the pick, before any await: a replace swaps the record and the
    # replicas together, so this is the version of the replica just picked.
    version = deployment.record.version
    replica.in_flight += 1
    started = time.perf_counter()

    def finished() -> None:
        replica.in_flight -= 1
        if timing is not None:
            timing.backend.observe(time.perf_counter() - started)

    try:
        try:
            answer = await pool.request(
                replica.host, replica.port, method, path, header_lines, body
            )
        except UpstreamError as exc:
            other = deployment.pick_other(replica) if may_resend(pool, exc) else None
            if other is None:
                raise
            logger.warning("%s: the backend at %s:%d failed before answering (%s); "
                           "sending the call to %s:%d", deployment.key, replica.host,
                           replica.port, exc, other.host, other.port)  # fmt: skip
            replica.in_flight -= 1
            replica, version = other, deployment.record.version
            replica.in_flight += 1
            answer = await pool.request(
                replica.host, replica.port, method, path, header_lines, body
            )
        # Any answer, error or not, is a sign of life the liveness check reads.
        replica.answers += 1
        if whole and answer.streaming:
            answer.body, answer.streaming = await answer.read_all(), False
    except (UpstreamError, TimeoutError) as exc:
        finished()
        raise transport_error(replica, exc) from exc
    except BaseException:
        finished()
        raise
    answer.model_version = version
    if answer.streaming:
        answer.on_finish = finished
    else:
        finished()
    return answer
