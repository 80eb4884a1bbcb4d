"""The console's routes: the page and its files (open), and two small JSON helpers.

Registered before the catch-all inference routes, so `/ui/...` is never read
as a deployment key. The page itself calls the ordinary management API with
the credentials the operator typed in; the helpers here only add what that API
lacks: traffic figures over the last minutes and one logged request to replay.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.app_keys import SETTINGS, STORE
from gateway.console.assets import Asset, load_assets, respond
from gateway.console.stats import SAMPLER, sampler_ctx
from gateway.edge.params import resolve_key, single_query
from gateway.errors import GatewayError
from gateway.records.stores.base import InferenceRecord

ASSETS = web.AppKey("console_assets", dict[str, Asset])
# A logged body larger than this is not offered as an example to edit in a text box.
MAX_EXAMPLE_BYTES = 64 * 1024
EXAMPLE_SCAN = 100


class NotFound(GatewayError):
    status, code = 404, "not_found"


async def redirect(request: web.Request) -> web.StreamResponse:
    """GET /ui: the page lives at /ui/ (its files are relative to it)."""
    raise web.HTTPPermanentRedirect("/ui/")


async def page(request: web.Request) -> web.Response:
    """GET /ui/: the console's single page."""
    return respond(request, request.app[ASSETS]["index.html"])


async def asset(request: web.Request) -> web.Response:
    """GET /ui/{name}: one of the page's files (script, style sheet, icon)."""
    name = request.match_info["name"]
    found = request.app[ASSETS].get(name)
    if found is None:
        raise NotFound(f"the console has no file {name!r}")
    return respond(request, found)


async def auth_info(request: web.Request) -> web.Response:
    """GET /ui/api/auth: whether management calls need credentials, and which kinds.

    Asked before any other call, so the page shows its sign-in form instead of
    provoking a 401; it says no more than a 401's challenge would.
    """
    settings = request.app[SETTINGS]
    basic = settings.htpasswd is not None
    methods = (["bearer"] if settings.admin_token else []) + (["basic"] if basic else [])
    inference = bool(settings.inference_token) or basic
    return web.json_response(
        {"required": bool(methods), "methods": methods, "inference_required": inference}
    )


async def stats(request: web.Request) -> web.Response:
    """GET /ui/api/stats[?key=]: per key, requests/s, error rates and p50/p99 over
    the last minutes; with `key`, also its series for the charts."""
    key = single_query(request, "key")
    return web.json_response(request.app[SAMPLER].stats(key))


def _body_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return json.dumps(value)  # a document store keeps the parsed JSON


async def _small_record(records: AsyncIterator[InferenceRecord]) -> InferenceRecord | None:
    """The first of the first EXAMPLE_SCAN records whose body fits in a text box."""
    try:
        scanned = 0
        async for record in records:
            if len(_body_text(record.inputs)) <= MAX_EXAMPLE_BYTES:
                return record
            scanned += 1
            if scanned >= EXAMPLE_SCAN:
                break
        return None
    finally:
        close = getattr(records, "aclose", None)
        if close is not None:  # release the store's cursor now, not at garbage collection
            await close()


async def logged_example(request: web.Request) -> web.Response:
    """GET /ui/api/example/{key}: one logged request body of the key, to send again.

    `{"example": null}` while nothing is logged: having no example is no error.
    """
    key = request.match_info["key"]
    name, version = resolve_key(request, key)
    record = await _small_record(request.app[STORE].iter_records(name, version))
    if record is None:
        return web.json_response({"example": None})
    example = {
        "content_type": record.content_type,
        "body": _body_text(record.inputs),
        "logged_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.ts)),
    }
    return web.json_response({"example": example})


OPEN_HANDLERS = (redirect, page, asset, auth_info)
"""Handlers anyone may reach: the page and files hold no data, and the page must
load before it can ask for a token."""


def add_routes(app: web.Application) -> None:
    """Register the console; call before the catch-all inference routes."""
    app[ASSETS] = load_assets()
    app.cleanup_ctx.append(sampler_ctx)
    r = app.router
    r.add_get("/ui", redirect)
    r.add_get("/ui/", page)
    r.add_get("/ui/api/auth", auth_info)
    r.add_get("/ui/api/stats", stats)
    r.add_get("/ui/api/example/{key}", logged_example)
    r.add_get("/ui/{name}", asset)
