"""The proxy's edge cases against small fake backends (real aiohttp servers on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app_keys import BATCHERS, INFERENCE_LOG, ROUTES, SETTINGS, UPSTREAM
from gateway.dataplane import proxy
from gateway.dataplane.upstream import UpstreamPool
from gateway.errors import error_middleware
from gateway.settings import Settings
from supervisor.deployment import Deployment, Replica
from supervisor.state_store import DeploymentRecord
from supervisor.states import State
from tests.support import unused_port

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

    async def make(table: dict[str, Deployment], read_timeout: float = 30.0) -> TestClient:
        app = web.Application(middlewares=[error_middleware])
        app[ROUTES] = table
        app[INFERENCE_LOG] = None
        app[BATCHERS] = {}
        app[SETTINGS] = Settings()

        async def pool_ctx(app: web.Application):  # type: ignore[no-untyped-def]
            app[UPSTREAM] = UpstreamPool(read_timeout=read_timeout)
            yield
            await app[UPSTREAM].close()

        app.cleanup_ctx.append(pool_ctx)
        proxy.add_routes(app)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_status_headers_and_body_pass_through(backend: TestServer, make_gateway) -> None:
    gw = await make_gateway({"m-1": deployment("m-1", running_replica(backend.port))})
    resp = await gw.post("/m-1", data=b"teapot")
    assert resp.status == 418
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["X-Backend"] == "fake"
    assert await resp.read() == b'{"tea": true}'


async def test_body_bytes_are_forwarded_unchanged(backend: TestServer, make_gateway) -> None:
    gw = await make_gateway({"m-1": deployment("m-1", running_replica(backend.port))})
    payload = b'{"inputs":  [1, 2.50,\n 3]}\xc3\xa9'  # odd spacing and bytes survive as sent
    resp = await gw.post(
        "/m-1/invocations",
        data=payload,
        headers={"Content-Type": "application/json; format=pandas-split", "X-Request-ID": "r-1"},
    )
    assert resp.status == 200
    assert await resp.read() == payload
    assert resp.headers["Content-Type"] == "application/json; format=pandas-split"
    assert resp.headers["X-Seen-Forwarded-For"] == "127.0.0.1"
    assert resp.headers["X-Seen-Request-Id"] == "r-1"


async def test_large_answers_stream_through_intact(backend: TestServer, make_gateway) -> None:
    gw = await make_gateway({"m-1": deployment("m-1", running_replica(backend.port))})
    resp = await gw.post("/model/m-1", data=b"big")
    assert resp.status == 200
    assert await resp.read() == BIG


async def test_hyphenated_keys_route_by_exact_match(make_gateway) -> None:
    apps, servers = [], []
    for tag in (b"short", b"long"):
        app = web.Application()

        async def answer(request: web.Request, tag: bytes = tag) -> web.Response:
            return web.Response(body=tag)

        app.router.add_post("/invocations", answer)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        apps.append(app)
        servers.append(server)
    try:
        gw = await make_gateway(
            {
                "wine-quality-2": deployment("wine-quality-2", running_replica(servers[0].port)),
                "wine-quality-2-1": deployment(
                    "wine-quality-2-1", running_replica(servers[1].port)
                ),
            }
        )
        assert await (await gw.post("/wine-quality-2")).read() == b"short"
        assert await (await gw.post("/wine-quality-2-1")).read() == b"long"
        missing = await gw.post("/wine-quality")
        assert missing.status == 404
        assert (await missing.json())["error"] == "deployment_not_found"
    finally:
        for server in servers:
            await server.close()


async def test_refused_connection_is_503_with_retry_after(make_gateway) -> None:
    gw = await make_gateway({"m-1": deployment("m-1", running_replica(unused_port()))})
    resp = await gw.post("/m-1", data=b"{}")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["error"] == "backend_unavailable"


async def test_slow_backend_is_504(backend: TestServer, make_gateway) -> None:
    gw = await make_gateway(
        {"m-1": deployment("m-1", running_replica(backend.port))}, read_timeout=0.3
    )
    resp = await gw.post("/m-1", data=b"slow")
    assert resp.status == 504
    assert (await resp.json())["error"] == "backend_timeout"


async def test_not_ready_is_503(backend: TestServer, make_gateway) -> None:
    starting = Replica(0, backend.port)
    starting.state = State.STARTING
    gw = await make_gateway({"m-1": deployment("m-1", starting)})
    resp = await gw.post("/m-1", data=b"{}")
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == "model_not_ready" and "starting" in body["detail"]


async def test_in_flight_is_counted_and_released(backend: TestServer, make_gateway) -> None:
    replica = running_replica(backend.port)
    gw = await make_gateway({"m-1": deployment("m-1", replica)}, read_timeout=5)
    calls = [gw.post("/m-1", data=b"slow") for _ in range(3)]
    tasks = [asyncio.ensure_future(c) for c in calls]
    for _ in range(100):
        if replica.in_flight == 3:
            break
        await asyncio.sleep(0.02)
    assert replica.in_flight == 3
    for resp in await asyncio.gather(*tasks):
        assert resp.status == 200
    assert replica.in_flight == 0


async def test_get_endpoints_forward(backend: TestServer, make_gateway) -> None:
    gw = await make_gateway({"m-1": deployment("m-1", running_replica(backend.port))})
    assert (await gw.get("/m-1/ping")).status == 200


def test_pick_prefers_least_outstanding_and_skips_unroutable() -> None:
    a, b, c = running_replica(1, 0), running_replica(2, 1), running_replica(3, 2)
    a.in_flight, b.in_flight, c.in_flight = 3, 1, 0
    c.healthy = False
    dep = deployment("m-1", a, b, c)
    assert dep.pick() is b
    b.state = State.BACKOFF
    assert dep.pick() is a
    a.state = State.STARTING
    assert dep.pick() is None


async def test_connections_are_pooled_not_per_request(backend: TestServer, make_gateway) -> None:
    gw = await make_gateway({"m-1": deployment("m-1", running_replica(backend.port))})
    pool: UpstreamPool = gw.app[UPSTREAM]
    for _ in range(5):
        assert (await gw.post("/m-1", data=b"{}")).status == 200
    # All five calls reused one keep-alive connection.
    assert len(pool._all) == 1
    assert len(pool._idle[("127.0.0.1", backend.port)]) == 1


async def test_a_backend_that_closes_idle_connections_is_retried_transparently(
    make_gateway,
) -> None:
    # A backend that answers once per connection and closes it right after: a reused
    # connection is found dead, and the call goes out again on a fresh one.
    async def answer_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    server = await asyncio.start_server(answer_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        gw = await make_gateway({"m-1": deployment("m-1", running_replica(port))})
        for _ in range(3):
            resp = await gw.post("/m-1", data=b"{}")
            assert resp.status == 200 and await resp.read() == b"{}"
            await asyncio.sleep(0.1)  # the backend has closed the idle connection by now
    finally:
        server.close()
        await server.wait_closed()


async def test_chunked_answers_stream_through(make_gateway) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(50):
            await resp.write(f"line {i}\n".encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/invocations", chunked)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        gw = await make_gateway({"m-1": deployment("m-1", running_replica(server.port))})
        resp = await gw.post("/m-1", data=b"{}")
        assert resp.status == 200
        assert await resp.text() == "".join(f"line {i}\n" for i in range(50))
    finally:
        await server.close()
