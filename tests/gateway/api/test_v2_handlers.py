"""The V2 handlers in-process: one serving path, off-loop translation, caching, access.

A real aiohttp backend on loopback answers like MLflow (the first column of each
row is its prediction) and records what it was sent; the registry is a small
fake that counts signature look-ups (what it tests: how often we ask).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api import v2
from gateway.app import route_scopes
from gateway.app_keys import (
    BATCHERS,
    INFERENCE_LOG,
    METRICS,
    REGISTRY,
    ROUTER,
    ROUTES,
    SETTINGS,
    UPSTREAM,
)
from gateway.dataplane import proxy
from gateway.dataplane.batching import Batcher
from gateway.dataplane.routing import Route, Router
from gateway.dataplane.upstream import UpstreamPool
from gateway.edge.auth import Authenticator, Scope, auth_middleware
from gateway.edge.telemetry import GatewayMetrics
from gateway.errors import VersionNotFound, error_middleware
from gateway.settings import Settings
from supervisor.deployment import Deployment, Replica
from supervisor.state_store import DeploymentRecord
from supervisor.states import State

SIGNATURE = {
    "inputs": [{"type": "double", "name": "x", "required": True},
               {"type": "double", "name": "y", "required": True}],
    "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1]}}],
    "params": None,
}  # fmt: skip
SEEN = web.AppKey("seen", list[dict[str, Any]])
INFER = "/v2/models/m/versions/1/infer"


class CountingRegistry:
    """Answers one signature slowly, so concurrent first look-ups overlap."""

    def __init__(self) -> None:
        self.calls = 0

    async def signature(self, name: str, version: str) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0.05)
        if version != "1":
            raise VersionNotFound(f"model {name!r} has no version {version}")
        return SIGNATURE


class RecordingLog:
    """What the proxy asks of the inference log: `submit`, and whether to await the disk."""

    sync_each_call = False

    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def submit(self, *record: Any, **extra: Any) -> None:
        self.records.append(record)


@pytest.fixture
async def backend() -> AsyncIterator[TestServer]:
    app = web.Application()
    app[SEEN] = []

    async def invocations(request: web.Request) -> web.Response:
        body = await request.json()
        app[SEEN].append({"body": body, "headers": dict(request.headers)})
        await asyncio.sleep(0.02)  # busy long enough for concurrent calls to queue up
        if body["dataframe_split"]["data"][0][0] == -1:
            return web.json_response(
                {"error_code": "BAD_REQUEST", "message": "x must be positive"}, status=400
            )
        return web.json_response({"predictions": [row[0] for row in body["dataframe_split"]["data"]]})  # fmt: skip

    app.router.add_post("/invocations", invocations)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


def _deployment(port: int, ready: bool = True) -> Deployment:
    replica = Replica(0, port)
    replica.state = State.RUNNING if ready else State.STARTING
    replica.healthy = ready
    return Deployment(DeploymentRecord("m-1", "m", "1"), [replica])


ClientMaker = Callable[..., Awaitable[TestClient[Any, Any]]]


async def _gateway(aiohttp_client: ClientMaker, backend: TestServer,
                   token: str | None = None, ready: bool = True,
                   route: Route | None = None) -> TestClient[Any, Any]:  # fmt: skip
    middlewares = [error_middleware]
    if token:
        scopes = route_scopes()
        authenticator = Authenticator(None, token, None, metrics_need_auth=False)
        middlewares.append(
            auth_middleware(authenticator, lambda r: scopes.get(r.match_info.handler, Scope.ADMIN))
        )
    app = web.Application(middlewares=middlewares)
    app[ROUTES] = {"m-1": _deployment(backend.port, ready)}
    app[BATCHERS] = {}
    app[SETTINGS] = Settings()
    app[METRICS] = GatewayMetrics()
    app[INFERENCE_LOG] = RecordingLog()  # type: ignore[assignment]
    app[REGISTRY] = CountingRegistry()  # type: ignore[assignment]
    if route is not None:
        app[ROUTER] = Router(None, app[ROUTES])
        await app[ROUTER].put(route)

    async def pool(app: web.Application) -> AsyncIterator[None]:
        app[UPSTREAM] = UpstreamPool(read_timeout=30)
        yield
        await app[UPSTREAM].close()

    app.cleanup_ctx.append(pool)
    v2.add_routes(app)
    proxy.add_routes(app)
    return await aiohttp_client(app)


def _v2_body(xs: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "y", "datatype": "FP64", "shape": [len(xs)], "data": [0.5] * len(xs)},
            {"name": "x", "datatype": "FP64", "shape": [len(xs)], "data": xs},
        ],
        **extra,
    }


async def test_infer_goes_through_the_serving_path(
    aiohttp_client: ClientMaker, backend: TestServer
) -> None:
    gw = await _gateway(aiohttp_client, backend)
    resp = await gw.post(INFER, json=_v2_body([1.5, 2.5], id="a"), headers={"X-Request-ID": "r-7"})
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "model_name": "m", "model_version": "1", "id": "a",
        "outputs": [{"name": "output-0", "datatype": "FP64", "shape": [2], "data": [1.5, 2.5]}],
    }  # fmt: skip
    [seen] = backend.app[SEEN]
    assert seen["body"] == {"dataframe_split": {"columns": ["x", "y"], "data": [[1.5, 0.5], [2.5, 0.5]]}}  # fmt: skip
    assert seen["headers"]["Content-Type"] == "application/json"
    assert seen["headers"]["X-Request-ID"] == "r-7"
    # Logged like any /invocations call: the MLflow body and MLflow's answer.
    [record] = gw.app[INFERENCE_LOG].records  # type: ignore[union-attr]
    assert record[:3] == ("m", "1", "application/json")
    assert json.loads(record[3]) == seen["body"]
    assert json.loads(record[4]) == {"predictions": [1.5, 2.5]}
    # Timed and counted under the deployment's key, by final status.
    bad = await gw.post(INFER, json=_v2_body([1.0], outputs=[{"name": "nope"}]))
    assert bad.status == 400
    registry = gw.app[METRICS].registry
    for code in ("200", "400"):
        assert registry.get_sample_value("modelgw_requests_total", {"key": "m-1", "code": code}) == 1  # fmt: skip
    assert registry.get_sample_value("modelgw_backend_duration_seconds_count", {"key": "m-1"}) == 2  # fmt: skip


async def test_v2_and_invocations_calls_share_backend_calls(
    aiohttp_client: ClientMaker, backend: TestServer
) -> None:
    gw = await _gateway(aiohttp_client, backend)
    gw.app[BATCHERS]["m-1"] = Batcher(gw.app[UPSTREAM], gw.app[ROUTES]["m-1"], 64, 2)

    async def v2_call(x: float) -> Any:
        resp = await gw.post(INFER, json=_v2_body([x]))
        return (await resp.json())["outputs"][0]["data"]

    async def invocation(x: float) -> Any:
        body = {"dataframe_split": {"columns": ["x", "y"], "data": [[x, 0.5]]}}
        return (await (await gw.post("/m-1/invocations", json=body)).json())["predictions"]

    assert await v2_call(99.0) == [99.0]  # the signature is looked up and cached first
    xs = [float(i) for i in range(40)]
    answers = await asyncio.gather(*(v2_call(x) if x % 2 else invocation(x) for x in xs))
    assert answers == [[x] for x in xs]
    mixed = [
        seen["body"]["dataframe_split"]["data"]
        for seen in backend.app[SEEN]
        if {row[0] % 2 for row in seen["body"]["dataframe_split"]["data"]} == {0, 1}
    ]
    assert mixed, "no backend call carried both V2 and /invocations rows"


async def test_compressed_and_binary_bodies_reach_the_backend_as_plain_json(
    aiohttp_client: ClientMaker, backend: TestServer
) -> None:
    gw = await _gateway(aiohttp_client, backend)
    body = gzip.compress(json.dumps(_v2_body([3.0])).encode())
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/octet-stream"}
    resp = await gw.post(INFER, data=body, headers=headers)
    assert resp.status == 200, await resp.text()
    sent = backend.app[SEEN][0]["headers"]
    assert sent["Content-Type"] == "application/json" and "Content-Encoding" not in sent


async def test_backend_errors_and_missing_models_keep_the_protocol_shape(
    aiohttp_client: ClientMaker, backend: TestServer
) -> None:
    gw = await _gateway(aiohttp_client, backend)
    resp = await gw.post(INFER, json=_v2_body([-1.0]))
    assert resp.status == 400
    body = await resp.json()
    assert (
        body["error"] == "bad_request: x must be positive"
        and body["message"] == "x must be positive"
    )
    for path in ("/v2/models/m/versions/2/infer", "/v2/models/nope/infer"):
        resp = await gw.post(path, json=_v2_body([1.0]))
        assert resp.status == 404
        assert (await resp.json())["error"].startswith("deployment_not_found: no deployment named")


async def test_signature_look_ups_are_shared_then_cached(
    aiohttp_client: ClientMaker, backend: TestServer
) -> None:
    gw = await _gateway(aiohttp_client, backend)
    replies = await asyncio.gather(*(gw.get("/v2/models/m/versions/1") for _ in range(8)))
    assert {r.status for r in replies} == {200}
    assert await gw.post(INFER, json=_v2_body([1.0])) is not None
    assert gw.app[REGISTRY].calls == 1  # type: ignore[attr-defined]
    # A failed look-up is not kept: the next call asks again.
    for _ in range(2):
        resp = await gw.get("/v2/models/m/versions/3")
        assert resp.status == 404
        assert (await resp.json())["error"].startswith("version_not_found: ")
    assert gw.app[REGISTRY].calls == 3  # type: ignore[attr-defined]


async def test_large_bodies_and_answers_are_translated_in_a_worker_thread(
    aiohttp_client: ClientMaker, backend: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_loop: list[tuple[str, bool]] = []
    for name in ("translate_request", "v2_answer"):
        original = getattr(v2, name)

        def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
            on_loop.append((_name, threading.current_thread() is threading.main_thread()))
            return _original(*args)

        monkeypatch.setattr(v2, name, spy)
    gw = await _gateway(aiohttp_client, backend)
    assert (await gw.post(INFER, json=_v2_body([1.0]))).status == 200
    assert on_loop == [("translate_request", True), ("v2_answer", True)]
    on_loop.clear()
    rows = [float(i) for i in range(12000)]  # over 64 KiB each way
    resp = await gw.post(INFER, json=_v2_body(rows))
    assert resp.status == 200 and (await resp.json())["outputs"][0]["data"] == rows
    assert on_loop == [("translate_request", False), ("v2_answer", False)]


async def test_readiness(aiohttp_client: ClientMaker, backend: TestServer) -> None:
    gw = await _gateway(aiohttp_client, backend, ready=False)
    assert (await gw.get("/v2/health/live")).status == 200
    resp = await gw.get("/v2/health/ready")
    assert resp.status == 503 and "m-1" in (await resp.json())["error"]
    resp = await gw.get("/v2/models/m/versions/1/ready")
    assert resp.status == 503 and "starting" in (await resp.json())["detail"]
    assert (await gw.get("/v2/models/other-1/ready")).status == 404
    ready = await _gateway(aiohttp_client, backend)
    assert (await ready.get("/v2/health/ready")).status == 200
    assert await (await ready.get("/v2/models/m-1/ready")).json() == {
        "name": "m", "version": "1", "ready": True,
    }  # fmt: skip


async def test_health_is_open_the_rest_needs_an_inference_token(
    aiohttp_client: ClientMaker, backend: TestServer
) -> None:
    gw = await _gateway(aiohttp_client, backend, token="infer-token")
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert (await gw.get(path)).status == 200, path
    auth = {"Authorization": "Bearer infer-token"}
    for path in ("/v2", "/v2/models/m/versions/1", "/v2/models/m-1/ready"):
        assert (await gw.get(path)).status == 401, path
        assert (await gw.get(path, headers=auth)).status == 200, path
    assert (await gw.post(INFER, json=_v2_body([1.0]))).status == 401
    assert (await gw.post(INFER, json=_v2_body([1.0]), headers=auth)).status == 200


async def test_a_routed_bare_model_name_is_served_on_every_v2_path(
    aiohttp_client: ClientMaker, backend: TestServer
) -> None:
    """`PUT /route/m` makes `m` a name V2 clients can call, like `POST /m`."""
    gw = await _gateway(aiohttp_client, backend, route=Route.of("m", {"1": 100}, None, None))
    router = gw.app[ROUTER]
    missing = await gw.post("/v2/models/other/infer", json=_v2_body([1.0]))
    assert missing.status == 404, await missing.text()  # a bare name without a route

    resp = await gw.post("/v2/models/m/infer", json=_v2_body([2.5], id="b"))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("m", "1", "b")
    assert body["outputs"][0]["data"] == [2.5]
    assert resp.headers["X-Model-Version"] == "1"
    [versions] = router.comparison("m")["versions"]
    assert (versions["version"], versions["arm"], versions["calls"]) == ("1", "primary", 1)

    ready = await gw.get("/v2/models/m/ready")
    assert ready.status == 200 and (await ready.json())["ready"] is True
    meta = await gw.get("/v2/models/m")
    assert meta.status == 200, await meta.text()
    assert [i["name"] for i in (await meta.json())["inputs"]] == ["x", "y"]
    # A version path is a concrete key, never routed.
    assert (await gw.post("/v2/models/m/versions/2/infer", json=_v2_body([1.0]))).status == 404
