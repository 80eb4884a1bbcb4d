"""Credential checks that cost an attacker as much as they cost us.

An unknown user pays one bcrypt check against a dummy hash of the same cost (no
user enumeration by timing); bcrypt runs in its own small pool (a flood of bad
Basic credentials never starves the default thread pool that exports, reports
and the log writer use); after a few failures a client address is answered 429
at once, without any bcrypt, until its back-off ends. Real HTTP on loopback; the
bcrypt check is a spy where the test is about who calls it and where.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Awaitable, Callable

import aiohttp
import bcrypt
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.edge.auth import Authenticator, Scope, auth_middleware
from gateway.edge.auth_backoff import FailureBackoff
from gateway.errors import error_middleware

USER, PASSWORD, TOKEN = "alice", "correct horse", "admin-token-1234"
HASHED = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5))


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Spy:
    """bcrypt.checkpw, recording what it was asked and on which thread."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.calls: list[tuple[bytes, bytes, str]] = []
        self.running = 0
        self.most_running = 0
        self.two_running = threading.Event()
        self.gate = gate
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.calls.append((password, hashed, threading.current_thread().name))
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            if self.running >= 2:
                self.two_running.set()
        try:
            if self.gate is not None:
                self.gate.wait(30)
            return bcrypt.checkpw(password, hashed)
        finally:
            with self._lock:
                self.running -= 1


async def _ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


Client = TestClient[web.Request, web.Application]


async def serve(
    authenticator: Authenticator, aiohttp_client: Callable[..., Awaitable[Client]]
) -> Client:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(authenticator, lambda r: Scope.ADMIN)]
    )
    app.router.add_get("/admin", _ok)

    async def close(app: web.Application) -> None:
        authenticator.close()

    app.on_cleanup.append(close)
    return await aiohttp_client(TestServer(app, host="127.0.0.1"))


def authenticator(spy: Spy, backoff: FailureBackoff | None = None) -> Authenticator:
    return Authenticator(
        admin_token=TOKEN, inference_token=None, htpasswd={USER: HASHED},
        metrics_need_auth=False, checkpw=spy, backoff=backoff,
    )  # fmt: skip


async def test_an_unknown_user_costs_one_check_against_a_hash_of_the_same_cost(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    spy = Spy()
    client = await serve(authenticator(spy), aiohttp_client)
    assert (await client.get("/admin", headers=basic("mallory", PASSWORD))).status == 401
    assert (await client.get("/admin", headers=basic(USER, "wrong"))).status == 401
    assert (await client.get("/admin", headers=basic(USER, PASSWORD))).status == 200
    unknown, known, right = spy.calls
    assert unknown[1] != HASHED and unknown[1][:7] == HASHED[:7] == b"$2b$05$"
    assert known[1] == right[1] == HASHED
    assert all(name.startswith("bcrypt") for _, _, name in spy.calls), spy.calls
    # A verified pair is remembered: no second bcrypt for the same credentials.
    assert (await client.get("/admin", headers=basic(USER, PASSWORD))).status == 200
    assert len(spy.calls) == 3


async def test_bad_credentials_never_starve_the_default_thread_pool(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    gate = threading.Event()
    spy = Spy(gate)
    client = await serve(authenticator(spy), aiohttp_client)
    calls = [
        asyncio.ensure_future(client.get("/admin", headers=basic(f"user{i}", "x")))
        for i in range(16)
    ]
    try:
        # Every bcrypt thread gets stuck, and the default pool still runs work.
        assert await asyncio.wait_for(asyncio.to_thread(spy.two_running.wait, 30), 40)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 30) == 42
        assert spy.most_running <= 2
    finally:
        gate.set()
    statuses = sorted([(await c).status for c in calls])
    assert set(statuses) <= {401, 429} and statuses.count(401) >= 10, statuses
    assert spy.most_running <= 2


async def test_failed_credentials_back_off_per_client_address(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    clock = Clock()
    spy = Spy()
    client = await serve(authenticator(spy, FailureBackoff(free=3, clock=clock)), aiohttp_client)
    for _ in range(4):
        reply = await client.get("/admin", headers=basic(USER, "wrong"))
        assert reply.status == 401
    checks = len(spy.calls)
    # In back-off: refused at once, whatever the credentials, and nothing is hashed...
    for headers in (basic(USER, "wrong"), basic("mallory", "x"), {"Authorization": "Bearer no"}):
        reply = await client.get("/admin", headers=headers)
        assert reply.status == 429, await reply.text()
        body = await reply.json()
        assert body["error"] == "too_many_requests"
        assert int(reply.headers["Retry-After"]) >= 1
    assert len(spy.calls) == checks
    # ...but a valid token still passes: an address can be shared behind a proxy.
    assert (await client.get("/admin", headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
    # Another address is not affected.
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        url = client.make_url("/admin")
        async with other.get(url, headers=basic(USER, "wrong")) as reply:
            assert reply.status == 401
    # Once the back-off has passed, credentials are checked again; the next
    # failure backs off for longer.
    clock.now += 60
    assert (await client.get("/admin", headers=basic(USER, "wrong"))).status == 401
    reply = await client.get("/admin", headers=basic(USER, "wrong"))
    assert reply.status == 429
    assert int(reply.headers["Retry-After"]) >= 2
    # A success forgets the address's failures.
    clock.now += 600
    assert (await client.get("/admin", headers=basic(USER, PASSWORD))).status == 200
    for _ in range(3):
        assert (await client.get("/admin", headers=basic(USER, "wrong"))).status == 401


async def test_no_credentials_is_not_a_failure(
    aiohttp_client: Callable[..., Awaitable[Client]],
) -> None:
    # A browser asks without credentials first, then with them: never a back-off.
    client = await serve(
        authenticator(Spy(), FailureBackoff(free=1, clock=Clock())), aiohttp_client
    )
    for _ in range(5):
        assert (await client.get("/admin")).status == 401
    assert (await client.get("/admin", headers=basic(USER, PASSWORD))).status == 200
