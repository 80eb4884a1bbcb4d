"""Liveness with real backend processes behind the gateway's one backend call.

A busy backend (calls in flight, its CPU moving, its pings unanswered) is left
alone; a hung one (SIGSTOP) has its calls failed before it is stopped, then is
replaced; a call whose replica died or hung before answering is answered by
another replica when the launcher allows re-sending, and fails with 503 when
it does not. The supervisor, the upstream pool and `call_backend` are wired as
the gateway wires them (`gateway.app.supervisor_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import supervisor_config
from gateway.dataplane.backend_call import call_backend
from gateway.dataplane.upstream import (
    UpstreamAborted,
    UpstreamError,
    UpstreamPool,
    UpstreamUnanswered,
)
from gateway.errors import GatewayError
from gateway.settings import Settings
from supervisor.deployment import Replica
from supervisor.manager import Manager
from supervisor.placement.local import LocalHandle, LocalPlacement
from supervisor.probe import ping
from supervisor.process import Command
from supervisor.state_store import DeploymentRecord, StateStore
from tests.gateway.dataplane.conftest import deployment, running_replica
from tests.support import REPO, free_port_range, unused_port

FAKE = str(REPO / "tests" / "fake_backend.py")
# Far longer than any test waits: only a failure or a re-send ends such a call early.
FOREVER = b"sleep:60"


class NotedHandle(LocalHandle):
    """A local backend that notes in the stack's log when it is told to stop."""

    def __init__(self, inner: LocalHandle, log: list[str], replica: int) -> None:
        super().__init__(inner.process, inner.host, inner.port)
        self._log = log
        self._replica = replica

    async def stop(self, grace: float) -> None:
        if self.alive:
            self._log.append(f"stop #{self._replica}")
        await super().stop(grace)


class NotedPlacement(LocalPlacement):
    def __init__(self, log: list[str], *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._log = log

    async def start(self, record: DeploymentRecord, replica: int) -> LocalHandle:
        return NotedHandle(await super().start(record, replica), self._log, replica)


async def fake_command(record: DeploymentRecord, port: int, host: str) -> Command:
    return Command([sys.executable, FAKE, str(port), record.options["mode"], host])


class Stack:
    """Fake backends as real processes, supervised and called as in the gateway.

    `log` records, in order, each call that failed and each backend stop.
    """

    def __init__(self, tmp_path: Path, mode: str, replicas: int, resend_safe: bool) -> None:
        self.tmp_path = tmp_path
        self.record = DeploymentRecord("m-1", "m", "1", options={"mode": mode})
        self.replicas = replicas
        self.resend_safe = resend_safe
        self.log: list[str] = []
        # The pid `freeze` stopped, and its state each time a call failed.
        self.frozen: int | None = None
        self.frozen_states: list[str] = []

    async def __aenter__(self) -> Stack:
        start, end = free_port_range(self.replicas + 1)
        self.store = await StateStore.open(self.tmp_path / "state.db")
        self.session = aiohttp.ClientSession()
        self.pool = UpstreamPool(read_timeout=90.0, resend_dropped=self.resend_safe)
        settings = Settings(health_interval=0.2, health_failures=2, stop_timeout=5.0)
        config = dataclasses.replace(supervisor_config(settings, self.pool), deploy_timeout=20.0)
        self.placement = NotedPlacement(
            self.log, self.store, fake_command, self.tmp_path / "logs",
            port_range=range(start, end + 1), stop_timeout=config.stop_timeout,
        )  # fmt: skip
        self.manager = Manager(self.store, self.placement, config, self.session)
        self.deployment, _ = await self.manager.deploy(self.record, self.replicas)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for replica in self.deployment.replicas:  # a failed test may leave one stopped
            if replica.pid is not None:
                os.killpg(replica.pid, signal.SIGCONT)
        await self.manager.close()
        await self.placement.close()
        await self.pool.close()
        await self.session.close()
        await self.store.close()

    @property
    def first(self) -> Replica:
        return self.deployment.replicas[0]

    async def call(self, body: bytes) -> str:
        """Which backend port answered (200), or the failure's status and code."""
        try:
            answer = await call_backend(
                self.pool, self.deployment, "POST", "/invocations",
                "Content-Type: text/plain\r\n", body, None, whole=True,
            )  # fmt: skip
        except GatewayError as exc:
            self.log.append("call failed")
            if self.frozen is not None:
                self.frozen_states.append(process_state(self.frozen))
            return f"{exc.status} {exc.code}: {exc.detail}"
        assert answer.status == 200 and answer.body == body
        return dict(answer.headers)["X-Backend-Port"]

    def start_calls(self, count: int, body: bytes) -> list[asyncio.Task[str]]:
        return [asyncio.create_task(self.call(body)) for _ in range(count)]


def stack(
    tmp_path: Path, mode: str = "ready", replicas: int = 1, resend_safe: bool = True
) -> Stack:
    return Stack(tmp_path, mode, replicas, resend_safe)


async def until(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def gather(tasks: list[asyncio.Task[str]]) -> list[str]:
    async with asyncio.timeout(60):  # a bound on a hang, not a figure under test
        return await asyncio.gather(*tasks)


def freeze(s: Stack, replica: Replica) -> None:
    """SIGSTOP the backend's whole process group: it holds its port, answers nothing."""
    assert replica.pid is not None
    s.frozen = replica.pid
    os.killpg(replica.pid, signal.SIGSTOP)


def process_state(pid: int) -> str:
    """ "T" while stopped; once killed, never again (dying, zombie, or gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def kill(replica: Replica) -> None:
    assert replica.pid is not None
    os.killpg(replica.pid, signal.SIGKILL)


def port_of(replica: Replica) -> str:
    return str(replica.port)


# ------------------------------------------------------------------- busy or hung


async def test_a_busy_backend_keeps_its_calls_and_is_not_restarted(tmp_path: Path) -> None:
    async with stack(tmp_path, mode="busy") as s:
        replica = s.first
        # Three calls of a second of CPU each, worked on one at a time: for three
        # seconds, fifteen health intervals, the backend answers no ping.
        calls = s.start_calls(3, b"spin:1")
        await until(lambda: replica.in_flight == 3, "three calls in flight")
        assert not await ping(s.session, f"{replica.base_url}/ping", 0.5)
        answers = await gather(calls)
        assert answers == [port_of(replica)] * 3
        assert replica.restarts == 0 and replica.routable
        assert s.log == []


async def test_a_hung_backend_fails_its_calls_before_it_is_stopped_then_is_replaced(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path) as s:
        replica = s.first
        calls = s.start_calls(2, FOREVER)
        await until(lambda: replica.in_flight == 2, "two calls in flight")
        freeze(s, replica)
        answers = await gather(calls)
        assert all(a.startswith("503 backend_unavailable") for a in answers), answers
        assert all("hung" in a for a in answers), answers
        # The calls failed when the hang was detected, while the backend was still
        # stopped: not when the stop killed it and the kernel closed its connections.
        assert s.frozen_states == ["T", "T"]
        await until(lambda: "stop #0" in s.log, "the hung backend to be stopped")
        assert replica.last_error is not None and "missed 2 health checks" in replica.last_error
        await until(lambda: replica.routable and replica.restarts == 1, "the replacement")
        assert await s.call(b"{}") == port_of(replica)


# ---------------------------------------------------------- a call sent elsewhere


async def test_calls_on_a_killed_replica_are_answered_by_the_other(tmp_path: Path) -> None:
    async with stack(tmp_path, replicas=2) as s:
        first, second = s.deployment.replicas
        calls = s.start_calls(6, b"sleep:2")
        await until(lambda: first.in_flight == second.in_flight == 3, "three calls on each")
        kill(first)
        answers = await gather(calls)
        assert answers == [port_of(second)] * 6
        assert "call failed" not in s.log


async def test_calls_on_a_hung_replica_are_answered_by_the_other(tmp_path: Path) -> None:
    async with stack(tmp_path, replicas=2) as s:
        first, second = s.deployment.replicas
        calls = s.start_calls(6, b"sleep:2")
        await until(lambda: first.in_flight == second.in_flight == 3, "three calls on each")
        freeze(s, first)
        answers = await gather(calls)
        assert answers == [port_of(second)] * 6
        assert "call failed" not in s.log and "stop #0" in s.log


async def test_without_resend_calls_on_a_killed_replica_fail_with_503(tmp_path: Path) -> None:
    async with stack(tmp_path, replicas=2, resend_safe=False) as s:
        first, second = s.deployment.replicas
        calls = s.start_calls(6, b"sleep:2")
        await until(lambda: first.in_flight == second.in_flight == 3, "three calls on each")
        kill(first)
        answers = await gather(calls)
        failed = [a for a in answers if a != port_of(second)]
        assert len(failed) == 3, answers
        assert all(a.startswith("503 backend_unavailable") for a in failed), failed


async def test_a_refused_connection_is_sent_to_another_replica_even_without_resend(
    backend: TestServer,
) -> None:
    # Nothing reached the dead backend, so sending elsewhere is safe for any backend.
    dead, alive = running_replica(unused_port(), 0), running_replica(backend.port, 1)
    pool = UpstreamPool(read_timeout=10.0, resend_dropped=False)
    try:
        assert deployment("m-1", dead, alive).pick() is dead
        answer = await call_backend(
            pool, deployment("m-1", dead, alive), "POST", "/invocations", "", b"{}", None
        )
    finally:
        await pool.close()
    assert answer.status == 200 and answer.body == b"{}"
    assert dead.in_flight == alive.in_flight == 0


# --------------------------------------------------------------- the pool's abort


@contextlib.asynccontextmanager
async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A loopback TCP server running `handle` per connection: its port and connections."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handle(reader, writer)
        await reader.read()  # until the gateway closes the connection

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], writers
    finally:
        server.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n{}")


async def answer_in_part(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader, writer)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")


async def test_abort_fails_the_waiting_calls_of_one_backend_only() -> None:
    pool = UpstreamPool(read_timeout=60.0)
    async with raw_server(read_request) as (hung, seen), raw_server(read_request) as (other, _):
        try:
            calls = [
                asyncio.create_task(pool.request("127.0.0.1", port, "POST", "/x", "", b"{}"))
                for port in (hung, hung, other)
            ]
            await until(lambda: len(seen) == 2, "two calls on the hung backend")
            assert pool.abort("127.0.0.1", hung, "it hung") == 2
            for call in calls[:2]:
                with pytest.raises(UpstreamAborted, match="it hung"):
                    await call
            assert not calls[2].done()
            calls[2].cancel()
            await asyncio.wait({calls[2]})
        finally:
            await pool.close()


async def test_a_call_aborted_mid_answer_is_not_one_to_send_again() -> None:
    pool = UpstreamPool(read_timeout=60.0)
    async with raw_server(answer_in_part) as (port, _):
        try:
            call = asyncio.create_task(pool.request("127.0.0.1", port, "POST", "/x", "", b"{}"))
            await until(lambda: any(c._received for c in pool._all), "part of the answer")
            assert pool.abort("127.0.0.1", port, "it hung") == 1
            with pytest.raises(UpstreamError, match="it hung") as info:
                await call
            assert not isinstance(info.value, UpstreamUnanswered)
        finally:
            await pool.close()


def test_the_settings_wire_the_pool_into_supervision() -> None:
    pool = UpstreamPool(read_timeout=1.0)
    config = supervisor_config(Settings(), pool)
    assert config.on_hung == pool.abort
