"""The gateway's error hierarchy and the one middleware that turns errors into JSON.

Every error body is `{"error": "<short code>", "detail": "<human sentence>"}`.
User mistakes map to 4xx here; only a bug gives a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from supervisor.errors import BackendStartError, NoFreePort, NotDeployed, SupervisorError

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """An error with an HTTP status and a stable short code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


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


class ModelNotReady(GatewayError):
    status, code = 503, "model_not_ready"


class NoPortAvailable(GatewayError):
    status, code = 503, "no_free_port"


class BackendUnavailable(GatewayError):
    status, code = 503, "backend_unavailable"


class BackendTimeout(GatewayError):
    status, code = 504, "backend_timeout"


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


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)
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
    except SupervisorError as exc:
        mapped = from_supervisor(exc)
        return error_response(mapped.status, mapped.code, mapped.detail, mapped.headers)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "an unexpected error occurred; see the logs")
