"""Fake backends (real aiohttp servers on loopback) and a gateway app in front of them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app_keys import BATCHERS, INFERENCE_LOG, METRICS, ROUTES, SETTINGS, UPSTREAM
from gateway.dataplane import proxy
from gateway.dataplane.upstream import UpstreamPool
from gateway.edge.dispatch import InferenceFirst
from gateway.edge.telemetry import GatewayMetrics
from gateway.errors import error_middleware
from gateway.settings import Settings
from supervisor.deployment import Deployment, Replica
from supervisor.state_store import DeploymentRecord
from supervisor.states import State

BIG = bytes(range(256)) * 12_000  # ~3 MB: above the streaming threshold


async def fake_invocations(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    # The body picks the behaviour: the proxy forwards only end-to-end headers it knows.
    mode = body.decode(errors="replace")
    if mode == "teapot":
        return web.Response(status=418, body=b'{"tea": true}', content_type="application/json",
                            headers={"X-Backend": "fake"})  # fmt: skip
    if mode == "slow":
        await asyncio.sleep(2)
    if mode == "big":
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await resp.prepare(request)
        for i in range(0, len(BIG), 100_000):
            await resp.write(BIG[i : i + 100_000])
        await resp.write_eof()
        return resp
    return web.Response(
        body=body,
        headers={
            "Content-Type": request.headers.get("Content-Type", "application/octet-stream"),
            "X-Seen-Forwarded-For": request.headers.get("X-Forwarded-For", ""),
            "X-Seen-Request-Id": request.headers.get("X-Request-ID", ""),
        },
    )


async def fake_ping(request: web.Request) -> web.Response:
    return web.Response(text="\n")


def running_replica(port: int, index: int = 0) -> Replica:
    replica = Replica(index, port)
    replica.state = State.RUNNING
    replica.healthy = True
    return replica


def deployment(key: str, *replicas: Replica) -> Deployment:
    name, _, version = key.rpartition("-")
    return Deployment(DeploymentRecord(key, name, version), list(replicas))


GatewayFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def backend() -> TestServer:
    app = web.Application()
    app.router.add_post("/invocations", fake_invocations)
    app.router.add_get("/ping", fake_ping)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def make_gateway() -> GatewayFactory:
    clients: list[TestClient] = []

    async def make(
        table: dict[str, Deployment],
        read_timeout: float = 30.0,
        resend_dropped: bool = True,
        connect_timeout: float = 5.0,
    ) -> TestClient:
        app = web.Application(middlewares=[error_middleware])
        app[ROUTES] = table
        app[INFERENCE_LOG] = None
        app[BATCHERS] = {}
        app[SETTINGS] = Settings()
        app[METRICS] = GatewayMetrics()

        async def pool_ctx(app: web.Application):  # type: ignore[no-untyped-def]
            app[UPSTREAM] = UpstreamPool(
                read_timeout=read_timeout,
                resend_dropped=resend_dropped,
                connect_timeout=connect_timeout,
            )
            yield
            await app[UPSTREAM].close()

        app.cleanup_ctx.append(pool_ctx)
        proxy.add_routes(app)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        # As `modelgw serve` does: deployed keys' calls skip the router after the first.
        assert client.server.runner is not None and client.server.runner.server is not None
        client.server.runner.server.request_handler = InferenceFirst(app, None)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
