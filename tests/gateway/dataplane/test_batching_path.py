"""Batched calls take the one backend-call path: timed, counted, ids carried, bugs are 500s."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app_keys import BATCHERS, METRICS, UPSTREAM
from gateway.dataplane import batching
from gateway.dataplane.batching import MERGE_MAX_BYTES, Batcher, mergeable
from tests.gateway.dataplane.conftest import GatewayFactory, deployment, running_replica

SEEN_IDS = web.AppKey("seen_ids", list[str])  # a str key warns (NotAppKeyWarning)


@pytest.fixture
async def predicting_backend() -> TestServer:
    """Predicts each row's `x`, slowly enough that concurrent calls queue and merge."""
    app = web.Application()
    seen_ids: list[str] = []

    async def invocations(request: web.Request) -> web.Response:
        seen_ids.append(request.headers.get("X-Request-ID", ""))
        rows = (await request.json())["dataframe_records"]
        await asyncio.sleep(0.05)
        return web.json_response(
            {"predictions": [row["x"] for row in rows]}, headers={"X-Backend": "fake"}
        )

    app.router.add_post("/invocations", invocations)
    app[SEEN_IDS] = seen_ids
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


async def batching_gateway(make_gateway: GatewayFactory, backend: TestServer) -> TestClient:
    table = {"m-1": deployment("m-1", running_replica(backend.port))}
    gw = await make_gateway(table)
    gw.app[BATCHERS]["m-1"] = Batcher(gw.app[UPSTREAM], table["m-1"], 64, 2)
    return gw


async def _call(gw: TestClient, i: int) -> tuple[int, dict[str, object], str]:
    resp = await gw.post(
        "/m-1",
        data=json.dumps({"dataframe_records": [{"x": i}]}),
        headers={"Content-Type": "application/json", "X-Request-ID": f"req-{i}"},
    )
    return resp.status, await resp.json(), resp.headers.get("X-Backend", "")


async def test_batched_calls_are_timed_counted_and_carry_request_ids(
    make_gateway: GatewayFactory, predicting_backend: TestServer
) -> None:
    gw = await batching_gateway(make_gateway, predicting_backend)
    answers = await asyncio.gather(*(_call(gw, i) for i in range(12)))
    for i, (status, body, backend_header) in enumerate(answers):
        assert status == 200 and body == {"predictions": [i]}
        assert backend_header == "fake"  # the backend's own answer headers are kept
    batcher = gw.app[BATCHERS]["m-1"]
    assert batcher.merged_calls > 0  # some calls really were merged
    seen = predicting_backend.app[SEEN_IDS]
    assert sorted(i for header in seen for i in header.split(",")) == sorted(
        f"req-{i}" for i in range(12)
    )
    count = gw.app[METRICS].registry.get_sample_value(
        "modelgw_backend_duration_seconds_count", {"key": "m-1"}
    )
    assert count == len(seen)  # every backend call, merged or not, is timed


async def test_a_bug_inside_batching_is_a_logged_500_not_a_503(
    make_gateway: GatewayFactory,
    predicting_backend: TestServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_split(*args: object) -> None:
        raise RuntimeError("a bug in the splitter")

    monkeypatch.setattr(batching, "_split", broken_split)
    gw = await batching_gateway(make_gateway, predicting_backend)
    answers = await asyncio.gather(*(_call(gw, i) for i in range(8)))
    merged = [body for status, body, _ in answers if status != 200]
    assert merged, "no call was merged, so the splitter never ran"
    assert all(body["error"] == "internal_error" for body in merged)
    assert {status for status, _, _ in answers} <= {200, 500}
    assert "a bug in the splitter" in caplog.text


def test_large_bodies_are_not_parsed_for_merging() -> None:
    rows = [{"x": i, "pad": "y" * 100} for i in range(1000)]
    body = json.dumps({"dataframe_records": rows}).encode()
    assert len(body) > MERGE_MAX_BYTES
    assert mergeable(body, "application/json") is None
    small = json.dumps({"dataframe_records": rows[:10]}).encode()
    assert mergeable(small, "application/json") is not None
