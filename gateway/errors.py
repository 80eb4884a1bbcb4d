"""The gateway's error hierarchy and the one middleware that turns errors into JSON.

Every error body is `{"error": "<short code>", "detail": "<human sentence>"}`.
User mistakes map to 4xx here; only a bug gives a 500. Neither costs more than
one log line: a client's fault logs none here (the access log has it) or one
budgeted line, and tracebacks of bugs are budgeted too, so no request pattern
can make the gateway flood its own log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.edge.client_errors import LogBudget, suppressed_note
from supervisor.errors import BackendStartError, NoFreePort, NotDeployed, SupervisorError

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """An error with an HTTP status and a stable short code."""

    status: int = 500
    code: str = "internal_error"
    close_connection: bool = False  # the connection cannot carry another request

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class UnreadableBody(BadRequest):
    """The body is not what its headers say: aiohttp's parser stops at the fault,
    so the connection cannot carry another request and is closed."""

    close_connection = True


class Unauthorized(GatewayError):
    status, code = 401, "unauthorized"


class Forbidden(GatewayError):
    status, code = 403, "forbidden"


class InvalidName(GatewayError):
    status, code = 400, "invalid_name"


class ModelNotFound(GatewayError):
    status, code = 404, "model_not_found"


class VersionNotFound(GatewayError):
    status, code = 404, "version_not_found"


class AliasNotFound(GatewayError):
    status, code = 404, "alias_not_found"


class DeploymentNotFound(GatewayError):
    status, code = 404, "deployment_not_found"


class Conflict(GatewayError):
    status, code = 409, "conflict"


class RequestTimeout(GatewayError):
    status, code = 408, "request_timeout"


class UnsupportedMediaType(GatewayError):
    status, code = 415, "unsupported_media_type"


class TooManyRequests(GatewayError):
    status, code = 429, "too_many_requests"


class ClientClosedRequest(GatewayError):
    """The client left before its request was read or answered (nginx's 499).

    Nobody reads the answer; the status is for the access log and metrics."""

    status, code = 499, "client_closed_request"


class ModelNotReady(GatewayError):
    status, code = 503, "model_not_ready"


class NoPortAvailable(GatewayError):
    status, code = 503, "no_free_port"


class BackendUnavailable(GatewayError):
    status, code = 503, "backend_unavailable"


class BackendTimeout(GatewayError):
    status, code = 504, "backend_timeout"


class BackendFailed(GatewayError):
    """A backend answered with its own 5xx: the gateway relays it as a bad gateway."""

    status, code = 502, "backend_error"


class DeployFailed(GatewayError):
    status, code = 502, "deploy_failed"


class RegistryUnavailable(GatewayError):
    status, code = 502, "registry_unavailable"


class InternalError(GatewayError):
    """A bug of ours, already logged with its traceback where it happened."""

    status, code = 500, "internal_error"


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps({"error": code, "detail": detail}).encode(),
        content_type="application/json",
        headers=headers,
    )


# aiohttp's own HTTP errors (unknown route, wrong method, body too large) get codes too.
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    431: "headers_too_large",
    499: "client_closed_request",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


def from_supervisor(exc: SupervisorError) -> GatewayError:
    """The HTTP face of an error the supervisor raised on purpose."""
    if isinstance(exc, NoFreePort):
        return NoPortAvailable(str(exc), headers={"Retry-After": "30"})
    if isinstance(exc, NotDeployed):
        return DeploymentNotFound(str(exc))
    if isinstance(exc, BackendStartError):
        tail = f"; last output:\n{exc.log_tail}" if exc.log_tail else ""
        return DeployFailed(f"{exc}{tail}")
    # Anything else the supervisor raises (an invalid state transition) is a bug.
    logger.error("supervisor error: %r", exc)
    return InternalError("an unexpected supervisor error occurred; see the logs")


# Lines per minute for clients that went away, and tracebacks per minute of each bug
# (by where it was raised): a new bug is always seen, a repeated one cannot flood.
_GONE_LINES = LogBudget(lines=10, interval=60.0)
_BUG_LINES: dict[tuple[str, str, int], LogBudget] = {}


def _bug_budget(exc: BaseException) -> LogBudget:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    where = (type(exc).__name__, code.co_filename if code else "", tb.tb_lineno if tb else 0)
    if where not in _BUG_LINES and len(_BUG_LINES) >= 1000:
        _BUG_LINES.clear()  # bounded: many different bugs at once reset the counts
    return _BUG_LINES.setdefault(where, LogBudget(lines=3, interval=60.0))


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = HTTP_CODES.get(exc.status, "http_error")
        detail = exc.reason if exc.text is None else exc.text
        if exc.status == 405:
            detail = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            detail = f"no route for {request.method} {request.path}"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, detail, headers)
    except Exception as exc:
        transport = request.transport
        client_gone = transport is None or transport.is_closing()
        return answer_for(exc, request.method, request.path, client_gone)


def answer_for(exc: Exception, method: str, path: str, client_gone: bool) -> web.Response:
    """The JSON answer for what a handler raised (aiohttp's HTTP errors aside).

    Shared by the error middleware and the inference lane (gateway/edge/inference_lane.py),
    so a call gets the same answer whichever of the two served it.
    """
    if isinstance(exc, GatewayError):
        response = error_response(exc.status, exc.code, exc.detail, exc.headers)
        if exc.close_connection:
            response.force_close()
        return response
    if isinstance(exc, SupervisorError):
        mapped = from_supervisor(exc)
        return error_response(mapped.status, mapped.code, mapped.detail, mapped.headers)
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        if not client_gone:
            return _unhandled(method, path, exc)  # not the client's connection: a bug
        # The client went away mid-answer (a streamed export, say): nothing to send.
        allowed, suppressed = _GONE_LINES.take()
        if allowed:
            logger.info("client left during %s %s: %s%s", method, path, exc,
                        suppressed_note(suppressed))  # fmt: skip
        return error_response(499, "client_closed_request", "the client closed the connection")
    return _unhandled(method, path, exc)


def _unhandled(method: str, path: str, exc: Exception) -> web.Response:
    """A bug: its traceback logged (within the bug's budget), a 500 answered."""
    allowed, suppressed = _bug_budget(exc).take()
    if allowed:
        logger.error("unhandled error on %s %s%s", method, path, suppressed_note(suppressed),
                     exc_info=exc)  # fmt: skip
    return error_response(500, "internal_error", "an unexpected error occurred; see the logs")
