"""GET /logs/{key}: a backend's recent output, bounded, validated and admin-only.

The bounds and the validation run against an in-process app whose replica has
a recording handle (it tests exactly what the endpoint asks the placement); the
real output is read from the session gateway's live backend.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.api import logs
from gateway.app import route_scopes
from gateway.app_keys import ROUTES
from gateway.edge.auth import Authenticator, Scope, auth_middleware
from gateway.errors import error_middleware
from supervisor.deployment import Deployment, Replica
from supervisor.placement.base import BackendHandle
from supervisor.state_store import DeploymentRecord
from supervisor.states import State
from tests.support import Gateway

KEY = "wine-quality-1"
ADMIN = "logs-admin-token"


class RecordingHandle(BackendHandle):
    """A handle whose output is 2000 numbered lines; it remembers what was asked."""

    def __init__(self) -> None:
        self.host, self.port, self.node, self.ref = "127.0.0.1", 1, "local", "1"
        self.asked: list[int] = []

    @property
    def alive(self) -> bool:
        return True

    async def wait_exit(self) -> int:
        return 0

    async def stop(self, grace: float) -> None:
        return None

    async def log_tail(self, lines: int = 25) -> str:
        self.asked.append(lines)
        return "\n".join(f"line {i}" for i in range(2000)[-lines:])


def _app(
    handles: dict[int, BackendHandle | None], admin_token: str | None = None
) -> web.Application:
    middlewares = [error_middleware]
    if admin_token:
        scopes = route_scopes()
        authenticator = Authenticator(admin_token, None, None, metrics_need_auth=False)
        middlewares.append(
            auth_middleware(authenticator, lambda r: scopes.get(r.match_info.handler, Scope.ADMIN))
        )
    app = web.Application(middlewares=middlewares)
    replicas = []
    for index, handle in handles.items():
        replica = Replica(index, state=State.RUNNING if handle else State.STARTING)
        if handle is not None:
            replica.bind(handle)
        replicas.append(replica)
    record = DeploymentRecord(KEY, "wine-quality", "1")
    app[ROUTES] = {KEY: Deployment(record, replicas)}
    logs.add_routes(app)
    return app


ClientMaker = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


async def test_default_is_100_lines_of_every_replica(aiohttp_client: ClientMaker) -> None:
    first, second = RecordingHandle(), RecordingHandle()
    client = await aiohttp_client(_app({0: first, 3: second, 4: None}))
    reply = await client.get(f"/logs/{KEY}")
    assert reply.status == 200
    body = await reply.json()
    assert body["key"] == KEY and body["lines"] == 100
    assert [r["replica"] for r in body["replicas"]] == [0, 3, 4]
    assert body["replicas"][0]["log"].splitlines() == [f"line {i}" for i in range(1900, 2000)]
    assert body["replicas"][0]["node"] == "local"
    # A replica that has not started yet has no output, and that is no error.
    assert body["replicas"][2] == {"replica": 4, "node": None, "status": "starting", "log": ""}
    assert first.asked == [100] and second.asked == [100]


async def test_one_replica_and_the_upper_bound(aiohttp_client: ClientMaker) -> None:
    first, second = RecordingHandle(), RecordingHandle()
    client = await aiohttp_client(_app({0: first, 3: second}))
    reply = await client.get(f"/logs/{KEY}", params={"replica": "3", "lines": "1000"})
    assert reply.status == 200
    body = await reply.json()
    assert [r["replica"] for r in body["replicas"]] == [3]
    assert len(body["replicas"][0]["log"].splitlines()) == 1000
    assert first.asked == [] and second.asked == [1000]


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"lines": "0"}, 400, "bad_request"),
        ({"lines": "1001"}, 400, "bad_request"),
        ({"lines": "many"}, 400, "bad_request"),
        ({"replica": "x"}, 400, "bad_request"),
        ({"replica": "-1"}, 400, "bad_request"),
        ({"replica": "\u0663"}, 400, "bad_request"),  # an Arabic-Indic 3: int() reads it
        ({"replica": "1_0"}, 400, "bad_request"),
        ({"replica": "9" * 5000}, 400, "bad_request"),
        ({"replica": "7"}, 404, "replica_not_found"),
    ],
)
async def test_bad_queries_are_json_errors(
    aiohttp_client: ClientMaker, query: dict[str, str], status: int, code: str
) -> None:
    handle = RecordingHandle()
    client = await aiohttp_client(_app({0: handle}))
    reply = await client.get(f"/logs/{KEY}", params=query)
    assert reply.status == status
    body = await reply.json()
    assert body["error"] == code and body["detail"]
    assert handle.asked == []  # nothing was read for a refused call


async def test_unknown_key_is_404(aiohttp_client: ClientMaker) -> None:
    client = await aiohttp_client(_app({0: RecordingHandle()}))
    reply = await client.get("/logs/other-model-2")
    assert reply.status == 404
    assert (await reply.json())["error"] == "deployment_not_found"


async def test_admin_only(aiohttp_client: ClientMaker) -> None:
    handle = RecordingHandle()
    client = await aiohttp_client(_app({0: handle}, admin_token=ADMIN))
    refused = await client.get(f"/logs/{KEY}")
    assert refused.status == 401
    assert (await refused.json())["error"] == "unauthorized"
    assert handle.asked == []
    allowed = await client.get(f"/logs/{KEY}", headers={"Authorization": f"Bearer {ADMIN}"})
    assert allowed.status == 200


def test_reads_the_live_backends_output(gateway: Gateway) -> None:
    entry = gateway.wait_running(KEY)
    index = entry["replicas"][0]["replica"]
    reply = gateway.get(f"/logs/{KEY}?replica={index}&lines=50")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["lines"] == 50
    (replica,) = body["replicas"]
    assert replica["replica"] == index and replica["status"] == "running"
    lines = replica["log"].splitlines()
    assert 0 < len(lines) <= 50
    # What came back is the end of the backend's own log file as it was then (the file
    # only grows; its first line may start mid-line where the byte bound cut it).
    path = gateway.data_dir / "logs" / f"{KEY}.{index}.log"
    written = "\n".join(path.read_text(errors="replace").splitlines())
    assert "\n".join(lines[1:]) in written
