"""No request pattern makes the gateway flood its own log.

A bug answers 500 with its traceback logged, but the same bug repeated logs a
few tracebacks a minute, not one per request; a different bug is still logged at
once. A client's fault logs one short line within a budget (the live side of
this is in test_defences.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.edge.client_errors import LogBudget
from gateway.errors import error_middleware

Client = TestClient[web.Request, web.Application]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_budget_allows_its_lines_then_counts_what_it_refuses() -> None:
    clock = Clock()
    budget = LogBudget(lines=2, interval=60.0, clock=clock)
    assert [budget.take() for _ in range(5)] == [(True, 0), (True, 0)] + [(False, 0)] * 3
    clock.now = 61.0
    assert budget.take() == (True, 3)  # the next allowed line says how many were dropped
    assert budget.take() == (True, 0)


async def _one_bug(request: web.Request) -> web.Response:
    raise RuntimeError("the same bug every time")


async def _another_bug(request: web.Request) -> web.Response:
    raise KeyError("a different bug")


async def test_a_repeated_bug_logs_a_few_tracebacks_and_a_new_one_is_still_seen(
    aiohttp_client: Callable[..., Awaitable[Client]], caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/one", _one_bug)
    app.router.add_get("/another", _another_bug)
    client = await aiohttp_client(TestServer(app, host="127.0.0.1"))
    with caplog.at_level(logging.ERROR, logger="gateway.errors"):
        for _ in range(50):
            reply = await client.get("/one")
            assert reply.status == 500
            assert (await reply.json())["error"] == "internal_error"
        reply = await client.get("/another")
        assert reply.status == 500
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert 1 <= sum("the same bug" in str(r.exc_info[1]) for r in tracebacks) <= 3
    assert any("a different bug" in str(r.exc_info[1]) for r in tracebacks)
