"""Weighted split, sticky callers and shadows through the real proxy and route API.

Each version is a real aiohttp backend on loopback that answers with its own
predictions, so which version served a call is read from the answer.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api import routes as routes_api
from gateway.app_keys import (
    ADMISSIONS,
    BATCHERS,
    INFERENCE_LOG,
    METRICS,
    ROUTER,
    ROUTES,
    SETTINGS,
    UPSTREAM,
)
from gateway.dataplane import proxy
from gateway.dataplane.routing import Route, Router, agree
from gateway.dataplane.upstream import UpstreamPool
from gateway.edge.telemetry import GatewayMetrics
from gateway.errors import error_middleware
from gateway.settings import Settings
from supervisor.deployment import Deployment
from supervisor.state_store import StateStore
from tests.gateway.dataplane.conftest import deployment, running_replica

NAME = "m"


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - plain state, no event to wait on
            await asyncio.sleep(0.01)


@dataclass
class Version:
    """A fake backend: `answer(rows)` gives its predictions; `mode` can fail or hang."""

    answer: Callable[[list[float]], list[float]]
    mode: str = "ok"
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    received: int = 0
    server: TestServer | None = None

    async def invocations(self, request: web.Request) -> web.Response:
        rows = json.loads(await request.read())["instances"]
        self.received += 1
        if self.mode == "fail":
            return web.json_response({"error_code": "BAD", "message": "boom"}, status=500)
        if self.mode == "hang":
            await self.gate.wait()
        return web.json_response({"predictions": self.answer(rows)})


@dataclass
class Front:
    client: TestClient
    versions: dict[str, Version]
    router: Router


@pytest.fixture
async def make_front() -> AsyncIterator[Callable[..., object]]:
    made: list[tuple[TestClient, list[Version]]] = []

    async def make(versions: dict[str, Version]) -> Front:
        table: dict[str, Deployment] = {}
        for number, version in versions.items():
            app = web.Application()
            app.router.add_post("/invocations", version.invocations)
            version.server = TestServer(app, host="127.0.0.1")
            await version.server.start_server()
            assert version.server.port is not None
            key = f"{NAME}-{number}"
            table[key] = deployment(key, running_replica(version.server.port))
        router = Router(None, table)
        app = web.Application(middlewares=[error_middleware])
        app[ROUTES] = table
        app[INFERENCE_LOG] = None
        app[BATCHERS] = {}
        app[ADMISSIONS] = {}
        app[SETTINGS] = Settings()
        app[METRICS] = GatewayMetrics()
        app[ROUTER] = router

        async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
            app[UPSTREAM] = UpstreamPool(read_timeout=30.0)
            yield
            await router.close()
            await app[UPSTREAM].close()

        app.cleanup_ctx.append(pool_ctx)
        routes_api.add_routes(app)
        proxy.add_routes(app)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        made.append((client, list(versions.values())))
        return Front(client, versions, router)

    yield make
    for client, versions in made:
        await client.close()
        for version in versions:
            version.gate.set()
            if version.server is not None:
                await version.server.close()


def constant(value: float) -> Callable[[list[float]], list[float]]:
    return lambda rows: [value for _ in rows]


async def predict(front: Front, row: float = 1.0, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    resp = await front.client.post(f"/{NAME}", json={"instances": [row]}, headers=headers or {})
    return resp.status, await resp.json()


async def put_route(front: Front, body: object) -> tuple[int, dict]:
    resp = await front.client.put(f"/route/{NAME}", json=body)
    return resp.status, await resp.json()


async def test_weights_split_calls_within_a_binomial_tolerance(make_front) -> None:  # type: ignore[no-untyped-def]
    front = await make_front({"1": Version(constant(1)), "2": Version(constant(2))})
    assert (await put_route(front, {"versions": {"1": 80, "2": 20}}))[0] == 200
    served: list[float] = []
    for _ in range(20):
        answers = await asyncio.gather(*(predict(front) for _ in range(50)))
        assert all(status == 200 for status, _ in answers)
        served += [body["predictions"][0] for _, body in answers]
    n, share = len(served), served.count(2) / len(served)
    sigma = math.sqrt(0.2 * 0.8 / n)
    assert abs(share - 0.2) < 4 * sigma, share  # 4 sigma: fails about once in 16,000 runs
    comparison = await (await front.client.get(f"/route/{NAME}/comparison")).json()
    calls = {v["version"]: v["calls"] for v in comparison["versions"]}
    assert calls == {"1": served.count(1), "2": served.count(2)}


async def test_a_sticky_header_keeps_a_caller_on_one_version(make_front) -> None:  # type: ignore[no-untyped-def]
    front = await make_front({"1": Version(constant(1)), "2": Version(constant(2))})
    route = {"versions": {"1": 50, "2": 50}, "sticky_header": "X-User-Id"}
    assert (await put_route(front, route))[0] == 200
    seen: dict[str, set[float]] = {}
    for user in range(40):
        for _ in range(4):
            _, body = await predict(front, headers={"X-User-Id": f"user-{user}"})
            seen.setdefault(f"user-{user}", set()).add(body["predictions"][0])
    assert all(len(versions) == 1 for versions in seen.values())
    assert set().union(*seen.values()) == {1, 2}  # both versions serve someone


@pytest.mark.parametrize("mode", ["fail", "hang"])
async def test_a_failing_or_hanging_shadow_never_reaches_the_caller(make_front, mode: str) -> None:  # type: ignore[no-untyped-def]
    shadow = Version(constant(3), mode=mode)
    front = await make_front({"1": Version(constant(1)), "3": shadow})
    assert (await put_route(front, {"versions": {"1": 100}, "shadow": "3"}))[0] == 200
    for _ in range(5):
        status, body = await predict(front)
        assert status == 200 and body == {"predictions": [1]}
    # The shadow got its copies; with "hang" it still holds them, yet every caller
    # above was answered.
    await wait_until(lambda: shadow.received == 5, timeout=10)
    if mode == "fail":
        comparison = await (await front.client.get(f"/route/{NAME}/comparison")).json()
        arm = next(v for v in comparison["versions"] if v["arm"] == "shadow")
        assert arm["calls"] == 5 and arm["errors"] == 5 and arm["compared"] == 0


async def test_the_agreement_rate_counts_the_rows_where_the_shadow_disagrees(make_front) -> None:  # type: ignore[no-untyped-def]
    # The shadow agrees with the primary (the row doubled) except on rows >= 7.
    primary = Version(lambda rows: [r * 2 for r in rows])
    shadow = Version(lambda rows: [r * 2 if r < 7 else -1 for r in rows])
    front = await make_front({"1": primary, "2": shadow})
    assert (await put_route(front, {"versions": {"1": 1}, "shadow": "2"}))[0] == 200
    for row in range(10):
        status, body = await predict(front, row=float(row))
        assert status == 200 and body == {"predictions": [row * 2]}
    await wait_until(
        lambda: sum(v.get("compared", 0) for v in front.router.comparison(NAME)["versions"]) == 10,
        timeout=10,
    )
    comparison = front.router.comparison(NAME)
    arms = {(v["version"], v["arm"]): v for v in comparison["versions"]}
    assert arms[("2", "shadow")]["agreement"] == pytest.approx(0.7)
    assert arms[("1", "primary")]["calls"] == 10 and arms[("1", "primary")]["p99_ms"] is not None


async def test_route_api_validates_and_delete_makes_the_bare_name_404_again(make_front) -> None:  # type: ignore[no-untyped-def]
    front = await make_front({"1": Version(constant(1))})
    assert (await predict(front))[0] == 404
    status, body = await put_route(front, {"versions": {"1": 90, "2": 10}})
    assert status == 400 and "2" in body["detail"] and "not deployed" in body["detail"]
    status, body = await put_route(front, {"versions": {"1": 1}, "shadow": "9"})
    assert status == 400 and "not deployed" in body["detail"]
    for bad in ({"versions": {}}, {"versions": {"1": -1}}, {"versions": {"1": 0}},
                {"versions": {"1": "x"}}, {"versions": {"1": 1}, "other": 1}, [1]):  # fmt: skip
        assert (await put_route(front, bad))[0] == 400, bad
    assert (await put_route(front, {"versions": {"1": 1}}))[0] == 200
    got = await (await front.client.get(f"/route/{NAME}")).json()
    assert got == {"name": NAME, "versions": {"1": 1}, "shadow": None, "sticky_header": None}
    assert (await predict(front))[0] == 200
    assert (await front.client.delete(f"/route/{NAME}")).status == 200
    assert (await predict(front))[0] == 404
    assert (await front.client.get(f"/route/{NAME}")).status == 404
    assert (await front.client.get(f"/route/{NAME}/comparison")).status == 404


async def test_routes_survive_a_restart_in_the_state_store(tmp_path: Path) -> None:
    table = {f"{NAME}-1": deployment(f"{NAME}-1"), f"{NAME}-2": deployment(f"{NAME}-2")}
    store = await StateStore.open(tmp_path / "state.db")
    try:
        router = Router(store, table)
        await router.put(Route.build(NAME, {"versions": {"1": 3, "2": 1}, "shadow": "2"}))
    finally:
        await store.close()
    store = await StateStore.open(tmp_path / "state.db")
    try:
        again = Router(store, table)
        await again.restore()
        assert again.routes[NAME].as_json() == {
            "name": NAME, "versions": {"1": 3, "2": 1}, "shadow": "2", "sticky_header": None,
        }  # fmt: skip
        await again.delete(NAME)
        assert await store.load_routes() == {}
    finally:
        await store.close()


def test_agreement_is_exact_for_labels_and_tolerant_for_numbers() -> None:
    assert agree(b'{"predictions": ["a", "b"]}', b'{"predictions": ["a", "b"]}')
    assert not agree(b'{"predictions": ["a", "b"]}', b'{"predictions": ["a", "c"]}')
    assert agree(b'{"predictions": [0.1]}', b'{"predictions": [0.10000000001]}')
    assert not agree(b'{"predictions": [0.1]}', b'{"predictions": [0.2]}')
    assert agree(b"[1, 2]", b'{"predictions": [1, 2]}')
    assert agree(b"not json", b"[1]") is None
