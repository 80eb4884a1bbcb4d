"""Load shedding and deadlines through the real proxy, in front of a gated fake backend.

The backend holds every call until the test opens its gate, so "busy" and
"queued" are states the test controls, not races against a sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest

from gateway.app_keys import (
    ADMISSIONS,
    BATCHERS,
    INFERENCE_LOG,
    METRICS,
    ROUTES,
    SETTINGS,
    UPSTREAM,
)
from gateway.dataplane import proxy
from gateway.dataplane.admission import Admission
from gateway.dataplane.batching import Batcher
from gateway.dataplane.upstream import UpstreamPool
from gateway.edge.telemetry import GatewayMetrics
from gateway.errors import error_middleware
from gateway.settings import Settings
from supervisor.deployment import Deployment
from tests.gateway.dataplane.conftest import deployment, running_replica

KEY = "slow-1"
BODY = json.dumps({"instances": [[1.0]]}).encode()


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    """Poll `predicate` without blocking the loop the gateway and backend run on."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - plain state, no event to wait on
            await asyncio.sleep(0.01)


@dataclass
class GatedBackend:
    server: TestServer
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[bytes] = field(default_factory=list)


@pytest.fixture
async def gated() -> AsyncIterator[GatedBackend]:
    state: list[GatedBackend] = []

    async def invocations(request: web.Request) -> web.Response:
        body = await request.read()
        state[0].received.append(body)
        await state[0].gate.wait()
        return web.json_response({"predictions": [5] * len(json.loads(body)["instances"])})

    app = web.Application()
    app.router.add_post("/invocations", invocations)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.append(GatedBackend(server))
    yield state[0]
    state[0].gate.set()
    await server.close()


@dataclass
class Front:
    client: TestClient
    deployment: Deployment
    metrics: GatewayMetrics


@pytest.fixture
async def front(gated: GatedBackend) -> AsyncIterator[Front]:
    """A gateway app (proxy routes, metrics, error middleware) in front of the gated backend."""
    assert gated.server.port is not None
    dep = deployment(KEY, running_replica(gated.server.port))
    metrics = GatewayMetrics()
    app = web.Application(middlewares=[error_middleware])
    app[ROUTES] = {KEY: dep}
    app[INFERENCE_LOG] = None
    app[BATCHERS] = {}
    app[ADMISSIONS] = {}
    app[SETTINGS] = Settings()
    app[METRICS] = metrics

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        app[UPSTREAM] = UpstreamPool(read_timeout=30.0)
        yield
        await app[UPSTREAM].close()

    app.cleanup_ctx.append(pool_ctx)
    proxy.add_routes(app)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    yield Front(client, dep, metrics)
    await client.close()


def admit(front: Front, max_concurrency: int, max_queue: int) -> Admission:
    admission = Admission(
        front.deployment, max_concurrency, max_queue,
        front.metrics.queue_time.labels(KEY), front.metrics.shed.labels(KEY),
    )  # fmt: skip
    front.client.app[ADMISSIONS][KEY] = admission
    return admission


async def call(front: Front, headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
    resp = await front.client.post(
        f"/{KEY}", data=BODY, headers={"Content-Type": "application/json", **(headers or {})}
    )
    return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def test_a_burst_past_the_queue_is_shed_at_once_with_retry_after(
    front: Front, gated: GatedBackend
) -> None:
    admission = admit(front, max_concurrency=1, max_queue=4)
    tasks = [asyncio.create_task(call(front)) for _ in range(20)]
    # With the one slot held by the backend and four calls queued, the other
    # fifteen are answered while the backend still holds its call.
    await wait_until(
        lambda: sum(t.done() for t in tasks) == 15 and len(gated.received) == 1, timeout=20
    )
    assert admission.queued == 4
    gated.gate.set()
    results = await asyncio.gather(*tasks)
    shed = [r for r in results if r[0] == 429]
    assert len(shed) == 15 and sum(r[0] == 200 for r in results) == 5
    for _, body, retry_after in shed:
        assert body["error"] == "too_many_requests" and "max_queue=4" in body["detail"]
        assert retry_after.isdigit() and int(retry_after) >= 1
    assert len(gated.received) == 5
    exposed = generate_latest(front.metrics.registry).decode()
    assert f'modelgw_shed_total{{key="{KEY}"}} 15.0' in exposed
    assert f'modelgw_queue_duration_seconds_count{{key="{KEY}"}} 5.0' in exposed
    assert admission.active == 0 and admission.queued == 0


async def test_a_queued_call_past_its_deadline_is_504_and_never_sent(
    front: Front, gated: GatedBackend
) -> None:
    admission = admit(front, max_concurrency=1, max_queue=4)
    first = asyncio.create_task(call(front))
    await wait_until(lambda: len(gated.received) == 1, timeout=10)
    status, body, _ = await call(front, {"X-Request-Timeout": "0.2"})
    assert status == 504 and "not sent" in body["detail"]
    assert admission.queued == 0
    gated.gate.set()
    assert (await first)[0] == 200
    assert len(gated.received) == 1  # the late call never reached the backend
    # The freed slot is usable: nothing leaked from the call that gave up.
    assert (await call(front))[0] == 200 and admission.active == 0


async def test_the_deadline_covers_the_backend_too(front: Front, gated: GatedBackend) -> None:
    status, body, _ = await call(front, {"X-Request-Timeout": "0.2"})
    assert status == 504 and body["error"] == "backend_timeout"
    assert "X-Request-Timeout" in body["detail"]


@pytest.mark.parametrize("raw", ["soon", "0", "-1", "nan", "inf"])
async def test_a_bad_deadline_is_a_400(front: Front, raw: str) -> None:
    status, body, _ = await call(front, {"X-Request-Timeout": raw})
    assert status == 400 and "X-Request-Timeout" in body["detail"]


async def test_a_batch_never_holds_a_call_past_its_deadline(
    front: Front, gated: GatedBackend
) -> None:
    batcher = Batcher(front.client.app[UPSTREAM], front.deployment, 8, 5)
    front.client.app[BATCHERS][KEY] = batcher
    first = asyncio.create_task(call(front))  # takes the one backend slot
    await wait_until(lambda: len(gated.received) == 1, timeout=10)
    status, _, _ = await call(front, {"X-Request-Timeout": "0.2"})
    assert status == 504
    assert batcher.describe()["queued"] == 0
    gated.gate.set()
    assert (await first)[0] == 200
    await batcher.close()
    assert len(gated.received) == 1  # the expired call joined no batch


async def test_slots_go_to_waiting_calls_in_arrival_order(front: Front) -> None:
    admission = Admission(front.deployment, 1, 10)
    loop = asyncio.get_running_loop()
    await admission.enter(loop.time() + 10)
    order: list[int] = []

    async def wait(i: int) -> None:
        await admission.enter(loop.time() + 10)
        order.append(i)
        admission.leave()

    tasks = [asyncio.create_task(wait(i)) for i in range(5)]
    await wait_until(lambda: admission.queued == 5, timeout=5)
    tasks[2].cancel()  # a caller that leaves gives up its place, not a slot
    admission.leave()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 1, 3, 4] and admission.active == 0
