"""The proxy's edge cases against small fake backends (real aiohttp servers on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app_keys import UPSTREAM
from gateway.dataplane.upstream import UpstreamPool
from supervisor.deployment import Replica
from supervisor.states import State
from tests.gateway.dataplane.conftest import BIG, GatewayFactory, deployment, running_replica
from tests.support import unused_port


async def test_status_headers_and_body_pass_through(backend: TestServer, make_gateway) -> None:
    gw = await make_gateway({"m-1": deployment("m-1", running_replica(backend.port))})
    resp = await gw.post("/m-1", data=b"teapot")
    assert resp.status == 418
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["X-Backend"] == "fake"
    # An error answer comes in the gateway's JSON error shape, the backend's document kept.
    assert await resp.json() == {
        "error": "backend_error",
        "detail": "the backend answered 418",
        "backend_answer": {"tea": True},
    }


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


@contextlib.asynccontextmanager
async def one_answer_per_connection() -> AsyncIterator[int]:
    """A raw backend on loopback (its port) that answers once per connection."""
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        await _one_answer_per_connection(reader, writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        # Close what the pool still holds open, so no stream outlives the loop.
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def _one_answer_per_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answers the first request of a connection; closes it on the second, unanswered.

    That is the race a keep-alive pool meets when the backend times out an idle
    connection just as the pool reuses it.
    """
    for answered in (True, False):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            break
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        await reader.readexactly(length)
        if not answered:
            break
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}"
        )
        await writer.drain()
    writer.close()


async def test_a_reused_connection_the_backend_closed_is_sent_again_once(
    make_gateway: GatewayFactory,
) -> None:
    async with one_answer_per_connection() as port:
        gw = await make_gateway({"m-1": deployment("m-1", running_replica(port))})
        pool: UpstreamPool = gw.app[UPSTREAM]
        for _ in range(3):
            resp = await gw.post("/m-1", data=b"{}")
            assert resp.status == 200 and await resp.read() == b"{}"
        # Calls 2 and 3 reused a connection the backend then closed unanswered.
        assert pool.resent == 2
        await gw.close()


async def test_no_resend_when_the_launcher_says_the_backend_is_not_idempotent(
    make_gateway: GatewayFactory,
) -> None:
    async with one_answer_per_connection() as port:
        gw = await make_gateway(
            {"m-1": deployment("m-1", running_replica(port))}, resend_dropped=False
        )
        assert (await gw.post("/m-1", data=b"{}")).status == 200
        second = await gw.post("/m-1", data=b"{}")
        assert second.status == 503
        assert (await second.json())["error"] == "backend_unavailable"
        assert gw.app[UPSTREAM].resent == 0
        await gw.close()


async def test_a_connect_timeout_is_a_504_not_refused(make_gateway: GatewayFactory) -> None:
    # A listener that never accepts, with its accept queue full: the kernel drops
    # further SYNs, so a connect hangs until our connect timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        gw = await make_gateway(
            {"m-1": deployment("m-1", running_replica(port))}, connect_timeout=0.5
        )
        resp = await gw.post("/m-1", data=b"{}")
        body = await resp.json()
        assert resp.status == 504, body
        assert body["error"] == "backend_timeout" and "did not accept" in body["detail"]
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_backend_errors_come_in_the_json_error_shape(make_gateway: GatewayFactory) -> None:
    async def mlflow_like(request: web.Request) -> web.Response:
        if request.content_type == "text/plain":
            return web.Response(status=415, text="This predictor only supports JSON or CSV")
        return web.json_response(
            {"error_code": "BAD_REQUEST", "message": "Invalid input. Columns are missing",
             "stack_trace": "Traceback (most recent call last): ..."},
            status=400,
        )  # fmt: skip

    app = web.Application()
    app.router.add_post("/invocations", mlflow_like)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        gw = await make_gateway({"m-1": deployment("m-1", running_replica(server.port))})
        resp = await gw.post("/m-1", data=b"{}", headers={"Content-Type": "application/json"})
        body = await resp.json()
        assert resp.status == 400
        assert body == {
            "error": "bad_request",
            "detail": "Invalid input. Columns are missing",
            "error_code": "BAD_REQUEST",
            "message": "Invalid input. Columns are missing",
        }
        resp = await gw.post("/m-1", data=b"x", headers={"Content-Type": "text/plain"})
        assert resp.status == 415 and resp.content_type == "application/json"
        assert await resp.json() == {
            "error": "unsupported_media_type",
            "detail": "This predictor only supports JSON or CSV",
        }
    finally:
        await server.close()


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
