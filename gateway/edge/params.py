"""Reading a request's path, query and body, with a clear 400/415 for every mistake."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.app_keys import ROUTES, SETTINGS
from gateway.edge.client_errors import describe
from gateway.edge.names import check_model_name, check_version
from gateway.errors import (
    BadRequest,
    ClientClosedRequest,
    DeploymentNotFound,
    RequestTimeout,
    UnreadableBody,
    UnsupportedMediaType,
)

# ASCII digits only: int() also reads '\u0663' (Arabic-Indic 3), fullwidth digits,
# ' 3 ' and '3_0'.
_INTEGER = re.compile(r"-?[0-9]{1,18}")


def single_query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} was given {len(values)} times; give it once")
    return values[0] if values else None


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = single_query(request, name)
    if raw is None:
        return default
    if not _INTEGER.fullmatch(raw):
        raise BadRequest(f"query parameter {name!r} must be an integer, not {raw!r}")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name!r} must be between {low} and {high}")
    return value


def resolve_key(request: web.Request, key: str) -> tuple[str, str]:
    """Name and version of `key`: a deployed key first, else split at the last '-'."""
    deployment = request.app[ROUTES].get(key)
    if deployment is not None:
        return deployment.record.model_name, deployment.record.version
    if "@" in key:
        raise DeploymentNotFound(
            f"{key!r} is not deployed: an alias key names a deployment; for the data of"
            " a version that is not deployed, use <model>-<version>"
        )
    name, sep, version = key.rpartition("-")
    if not sep or not name:
        raise BadRequest(f"{key!r} is not a '<model>-<version>' key")
    return check_model_name(name), check_version(version)


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400/415 that says what is wrong."""
    if request.content_type not in ("application/json", "text/json", "application/octet-stream"):
        raise UnsupportedMediaType(
            f"send JSON with Content-Type: application/json, not {request.content_type!r}"
        )
    raw = await read_body(request)
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


async def read_body(request: web.Request) -> bytes:
    """The whole request body, within the size limit and the body timeout.

    aiohttp decodes a body sent with Content-Encoding (gzip, deflate, br) as it
    reads it; a body that is not what its encoding says is a 400, as is one cut
    short by a broken chunked framing. A client that leaves mid-body gets a 499.
    """
    try:
        if request.content.is_eof():
            return await request.read()  # already here, as small bodies usually are
        async with asyncio.timeout(request.app[SETTINGS].body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    except RequestPayloadError as exc:
        # Marked read, so aiohttp does not drain it again after the answer (which
        # would raise the same error once more, with a traceback).
        request.content.feed_eof()
        encoding = request.headers.get("Content-Encoding")
        detail = describe(exc)
        if encoding and encoding.lower() not in detail.lower():
            detail = f"{detail} (Content-Encoding: {encoding})"
        raise UnreadableBody(f"the body could not be read: {detail}") from None
    except ConnectionResetError:
        raise ClientClosedRequest("the client closed the connection mid-body") from None
