"""A backend's error answers, in the gateway's JSON error shape.

MLflow's scoring server answers a bad input with `{"error_code", "message",
"stack_trace"}` (the server's own Python traceback) and some mistakes, such as
an unsupported content type, in plain text. Callers get one shape for every
error: `{"error", "detail"}`, plus MLflow's `error_code` and `message` so
MLflow clients keep working. The stack trace stays out unless the operator asks
for it (GATEWAY_BACKEND_STACK_TRACES): it shows server internals to callers.
Only error answers (4xx/5xx held whole) pass here; successful bodies are never
parsed.

A backend's 4xx is the caller's mistake and keeps its status. A backend's 5xx
(MLflow answers 500 to JSON nested deeper than its parser goes, for one) is a
failure of the backend, not of the gateway: the caller gets 502 `backend_error`
with the backend's status, error code and message, never a gateway 500.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.errors import HTTP_CODES

_MAX_TEXT = 2000


def backend_error_response(
    status: int, headers: list[tuple[str, str]], body: bytes, keep_trace: bool
) -> web.Response:
    """The JSON error the caller gets for a backend's error answer."""
    content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
    rendered: dict[str, Any] | None = None
    if "json" in content_type:
        rendered = _from_json(status, body, keep_trace)
    if rendered is None:
        text = body.decode("utf-8", "replace").strip()
        rendered = {
            "error": HTTP_CODES.get(status, "backend_error"),
            "detail": text[:_MAX_TEXT] or f"the backend answered {status}",
        }
    if status >= 500:
        rendered = _as_bad_gateway(status, rendered)
    passed = {k: v for k, v in headers if k.lower() not in ("content-type", "content-length")}
    return web.Response(
        status=502 if status >= 500 else status,
        body=json.dumps(rendered).encode(),
        content_type="application/json",
        headers=passed,
    )


def _from_json(status: int, body: bytes, keep_trace: bool) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    if "error" in data and "detail" in data and "stack_trace" not in data:
        return data  # already our shape (a gateway-like backend)
    message = data.get("message")
    code = data.get("error_code")
    if not isinstance(message, str) and not isinstance(code, str):
        # Some other JSON error document: kept whole, under our two fields.
        return {
            "error": HTTP_CODES.get(status, "backend_error"),
            "detail": f"the backend answered {status}",
            "backend_answer": data,
        }
    rendered: dict[str, Any] = {
        "error": str(code).lower() if code else "backend_error",
        "detail": str(message or code)[:_MAX_TEXT],
        "error_code": code,
        "message": message,
    }
    if keep_trace and "stack_trace" in data:
        rendered["stack_trace"] = data["stack_trace"]
    return rendered


def _as_bad_gateway(status: int, rendered: dict[str, Any]) -> dict[str, Any]:
    """A backend's own 5xx, as the 502 the caller gets: the backend's words kept."""
    message = rendered.get("message") if isinstance(rendered.get("message"), str) else None
    said = message or rendered.get("detail")
    return {
        **rendered,
        "error": "backend_error",
        "detail": f"the backend failed with {status}: {said}"[:_MAX_TEXT],
        "backend_status": status,
        "error_code": rendered.get("error_code") or HTTP_CODES.get(status, "backend_error"),
        "message": message if message is not None else str(said),
    }
