"""Operator endpoints: the Prometheus scrape, the OpenAPI document and its docs page."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.openapi import build_spec, docs_page
from gateway.app_keys import METRICS, PLACEMENT
from gateway.deploy.placement import free_ports

SPEC = web.AppKey("openapi_spec", dict[str, Any])


async def metrics(request: web.Request) -> web.Response:
    gateway_metrics = request.app[METRICS]
    gateway_metrics.free_ports.set(await free_ports(request.app[PLACEMENT]))
    return web.Response(
        body=generate_latest(gateway_metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[SPEC])


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=docs_page(request.app[SPEC]), content_type="text/html")


def add_routes(app: web.Application) -> None:
    app[SPEC] = build_spec()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
