"""Inference calls dispatched before the router behave exactly as routed ones.

The first call on a path goes through aiohttp's router; the ones after it take the
dispatcher's road. Each test makes both kinds of call and compares them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app_keys import BATCHERS, INFERENCE_LOG, METRICS, ROUTES, SETTINGS, UPSTREAM
from gateway.dataplane import proxy
from gateway.dataplane.upstream import UpstreamPool
from gateway.edge.auth import Authenticator, Scope, auth_middleware
from gateway.edge.dispatch import InferenceFirst
from gateway.edge.request_ids import echo_request_id
from gateway.edge.telemetry import GatewayMetrics
from gateway.errors import error_middleware
from gateway.settings import Settings
from supervisor.deployment import Deployment
from tests.gateway.dataplane.conftest import deployment, fake_invocations, running_replica
from tests.support import unused_port

INFERENCE_TOKEN = "inference-secret"


@pytest.fixture
async def backend() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/invocations", fake_invocations)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def _gateway(
    table: dict[str, Deployment], authenticator: Authenticator | None = None
) -> tuple[TestClient, InferenceFirst]:
    middlewares = [error_middleware]
    if authenticator is not None:
        middlewares.append(auth_middleware(authenticator, lambda request: Scope.INFERENCE))
    app = web.Application(middlewares=middlewares)
    app[ROUTES] = table
    app[INFERENCE_LOG] = None
    app[BATCHERS] = {}
    app[SETTINGS] = Settings()
    app[METRICS] = GatewayMetrics()
    app[UPSTREAM] = UpstreamPool(read_timeout=30.0)
    app.on_response_prepare.append(echo_request_id)

    async def close_pool(app: web.Application) -> None:
        await app[UPSTREAM].close()

    app.on_cleanup.append(close_pool)
    proxy.add_routes(app)
    dispatch = InferenceFirst(app, authenticator)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    assert client.server.runner is not None and client.server.runner.server is not None
    client.server.runner.server.request_handler = dispatch
    return client, dispatch


async def test_calls_after_the_first_skip_the_router_with_the_same_answer(
    backend: TestServer,
) -> None:
    client, dispatch = await _gateway({"m-1": deployment("m-1", running_replica(backend.port))})
    try:
        answers = []
        for path in ("/m-1", "/m-1", "/m-1/invocations", "/m-1/invocations", "/model/m-1"):
            resp = await client.post(path, data=b'{"x": 1}', headers={"X-Request-ID": "r-7"})
            answers.append((resp.status, await resp.read(), resp.headers["X-Request-ID"],
                            resp.headers["X-Model-Version"], resp.headers["X-Seen-Request-Id"]))  # fmt: skip
        assert set(answers) == {(200, b'{"x": 1}', "r-7", "1", "r-7")}
        assert set(dispatch._matches) == {"/m-1", "/m-1/invocations", "/model/m-1"}
        # A made id on the dispatcher's road too, sent to the backend and echoed.
        resp = await client.post("/m-1", data=b"{}")
        assert resp.headers["X-Request-ID"] == resp.headers["X-Seen-Request-Id"] != ""
    finally:
        await client.close()


async def test_an_undeployed_key_goes_back_to_the_router(backend: TestServer) -> None:
    table = {"m-1": deployment("m-1", running_replica(backend.port))}
    client, dispatch = await _gateway(table)
    try:
        for _ in range(2):
            assert (await client.post("/m-1", data=b"{}")).status == 200
        del table["m-1"]
        resp = await client.post("/m-1", data=b"{}")
        assert resp.status == 404
        assert (await resp.json())["error"] == "deployment_not_found"
        # Deployed again: the remembered path serves it at once.
        table["m-1"] = deployment("m-1", running_replica(backend.port))
        assert (await client.post("/m-1", data=b"{}")).status == 200
        # A query string or an Expect header is the router's, every time.
        for _ in range(2):
            assert (await client.post("/m-1?a=1", data=b"{}")).status == 200
        assert "/m-1?a=1" not in dispatch._matches
        resp = await client.post("/m-1", data=b"{}", expect100=True)
        assert resp.status == 200
    finally:
        await client.close()


async def test_errors_are_json_on_both_roads() -> None:
    client, _ = await _gateway({"m-1": deployment("m-1", running_replica(unused_port()))})
    try:
        for _ in range(2):
            resp = await client.post("/m-1", data=b"{}", headers={"X-Request-ID": "r-9"})
            assert resp.status == 503
            assert (await resp.json())["error"] == "backend_unavailable"
            assert resp.headers["X-Request-ID"] == "r-9"
    finally:
        await client.close()


async def test_auth_guards_both_roads(backend: TestServer) -> None:
    authenticator = Authenticator(
        admin_token=None, inference_token=INFERENCE_TOKEN, htpasswd=None, metrics_need_auth=False
    )
    client, _ = await _gateway(
        {"m-1": deployment("m-1", running_replica(backend.port))}, authenticator
    )
    good = {"Authorization": f"Bearer {INFERENCE_TOKEN}"}
    try:
        for _ in range(2):
            resp = await client.post("/m-1", data=b"{}")
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
            assert "Bearer" in resp.headers["WWW-Authenticate"]
            resp = await client.post("/m-1", data=b"{}", headers={"Authorization": "Bearer no"})
            assert resp.status == 401
            assert (await client.post("/m-1", data=b"{}", headers=good)).status == 200
    finally:
        await client.close()
        authenticator.close()
