"""The route API: weighted splits and shadows between versions of one model.

`PUT/GET/DELETE /route/{name}` and `GET /route/{name}/comparison`; the routing
itself is `gateway.dataplane.routing`, used by the proxy for bare model names.
"""

from __future__ import annotations

from aiohttp import web

from gateway.app_keys import ROUTER
from gateway.dataplane.routing import Route, Router
from gateway.edge.names import check_model_name
from gateway.edge.params import read_json_object
from gateway.errors import DeploymentNotFound


def _route(request: web.Request) -> tuple[Router, str]:
    """The router and the route's model name, or a 404 when there is no route."""
    name = check_model_name(request.match_info["name"])
    router = request.app[ROUTER]
    if name not in router.routes:
        raise DeploymentNotFound(
            f"no route for {name!r}; set one with PUT /route/{name}"
            ' and a body such as {"versions": {"1": 90, "2": 10}}'
        )
    return router, name


async def put_route(request: web.Request) -> web.Response:
    """PUT /route/{name}: route the bare name's calls to deployed versions by weight."""
    name = check_model_name(request.match_info["name"])
    route = Route.build(name, await read_json_object(request))
    await request.app[ROUTER].put(route)
    return web.json_response(route.as_json())


async def get_route(request: web.Request) -> web.Response:
    router, name = _route(request)
    return web.json_response(router.routes[name].as_json())


async def delete_route(request: web.Request) -> web.Response:
    """DELETE /route/{name}: the bare name is a 404 again."""
    router, name = _route(request)
    await router.delete(name)
    return web.json_response({"name": name, "deleted": True})


async def get_comparison(request: web.Request) -> web.Response:
    """GET /route/{name}/comparison: calls, errors and latency per version and arm,
    and how often the shadow agreed with the primary."""
    router, name = _route(request)
    return web.json_response(router.comparison(name))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_put("/route/{name}", put_route)
    r.add_get("/route/{name}", get_route)
    r.add_delete("/route/{name}", delete_route)
    r.add_get("/route/{name}/comparison", get_comparison)
