"""Reading a request's path, query and body, with a clear 400/415 for every mistake."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from gateway.app_keys import ROUTES, SETTINGS
from gateway.edge.names import check_model_name, check_version
from gateway.errors import BadRequest, DeploymentNotFound, RequestTimeout, UnsupportedMediaType


def single_query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} was given {len(values)} times; give it once")
    return values[0] if values else None


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = single_query(request, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, not {raw!r}") from None
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
    """The whole request body, within the size limit and the body timeout."""
    if request.content.is_eof():
        return await request.read()  # already here, as small bodies usually are
    try:
        async with asyncio.timeout(request.app[SETTINGS].body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
