"""Serving the app: the listening socket, its limits against cheap denial of
service, and a stop that answers what already arrived.

aiohttp's `run_app`, plus:

- the soft open-files limit is raised to the hard limit at start (1,024 is a
  common default, and 1,100 idle connections then locked every client out);
- at most GATEWAY_MAX_CLIENT_CONNECTIONS client connections (lowered to what
  the open-files limit can hold): one more is answered 503 and closed at once,
  while the open ones are served;
- a connection idle for GATEWAY_KEEPALIVE_TIMEOUT, before its first request or
  between two, is closed (aiohttp's keep-alive timer covers both), so an idle
  flood or a slowloris gives its slots back;
- a malformed HTTP message logs one budgeted line, not a traceback;
- on SIGTERM or SIGINT the listener closes first; connections get a short grace
  in which a request already on its way over a kept-alive connection is
  answered (with `Connection: close`) instead of reset; then calls in flight
  drain (GATEWAY_SHUTDOWN_TIMEOUT) and the app's resources close in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from aiohttp import web
from yarl import URL

from gateway.edge import client_errors
from gateway.edge.client_errors import LogBudget, suppressed_note
from gateway.edge.request_ids import JsonAccessLogger, access_logger

if TYPE_CHECKING:  # client commands import this module: they never load the app
    from gateway.edge.inference_lane import InferenceLane

logger = logging.getLogger(__name__)

# Files the gateway needs besides client connections: backend connections beyond
# the in-flight ones, stores, spool and log files, MLflow's own.
RESERVED_FILES = 256
# How long kept-alive connections may still deliver a request after SIGTERM.
DRAIN_GRACE = 1.0


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    max_connections: int
    keepalive_timeout: float
    shutdown_timeout: float
    backlog: int = 1024


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an infinite soft NOFILE; 2**20 is its usual ceiling (fs.nr_open).
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY:
        return target
    if soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        logger.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
        return soft
    logger.info("open-files limit raised from %d to %d", soft, target)
    return target


def connection_cap(configured: int, open_files: int) -> int:
    """Client connections allowed: the setting, within what the open-files limit holds.

    A call in flight holds a client and a backend connection, and the gateway
    needs files of its own: clients get half of what is left after a reserve.
    """
    fits = max(1, (open_files - RESERVED_FILES) // 2)
    if configured > fits:
        logger.info(
            "GATEWAY_MAX_CLIENT_CONNECTIONS lowered from %d to %d: the open-files limit is %d",
            configured, fits, open_files,
        )  # fmt: skip
    return min(configured, fits)


_REFUSAL_BODY = json.dumps(
    {"error": "service_unavailable",
     "detail": "the gateway serves as many client connections as it may; retry shortly"}
).encode()  # fmt: skip
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
    + str(len(_REFUSAL_BODY)).encode()
    + b"\r\n\r\n"
    + _REFUSAL_BODY
)


class _Refusal(asyncio.Protocol):
    """A connection past the cap: 503, then closed once the client has read it.

    Closing a socket with unread input resets it, and a reset can destroy the
    answer before the client reads it; so the request is read and dropped until
    the client closes, for at most `linger` seconds.
    """

    linger = 2.0

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass
        transport.write(_REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self._loop.call_later(self.linger, transport.abort)

    def data_received(self, data: bytes) -> None:
        pass  # the request of a refused connection is not read

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class CappedSite(web.BaseSite):
    """A TCP site that refuses connections past `max_connections` at once."""

    __slots__ = ("_budget", "_cap", "_host", "_lane", "_on_refused", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        listen: Listen,
        cap: int,
        on_refused: Callable[[], None] | None = None,
        lane: InferenceLane | None = None,
    ) -> None:
        super().__init__(runner, backlog=listen.backlog)
        self._host, self._port, self._cap = listen.host, listen.port, cap
        self._budget = LogBudget(lines=5, interval=60.0)
        self._on_refused = on_refused
        self._lane = lane  # serves each connection first, when there is one

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host or "0.0.0.0", port=self._port))

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        lane = self._lane

        def protocol() -> asyncio.Protocol:
            open_now = len(server.connections) + (len(lane.connections) if lane else 0)
            if open_now < self._cap:
                return lane() if lane is not None else server()
            if self._on_refused is not None:
                self._on_refused()
            allowed, suppressed = self._budget.take()
            if allowed:
                logger.warning(
                    "refused a client connection: %d are open (GATEWAY_MAX_CLIENT_CONNECTIONS)%s",
                    open_now, suppressed_note(suppressed),
                )  # fmt: skip
            return _Refusal(loop)

        self._server = await loop.create_server(
            protocol, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class Drain:
    """Once set, every answer closes its connection (`Connection: close`)."""

    def __init__(self) -> None:
        self.on = False

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.on:
            # aiohttp has made the headers by now: the header is set here, and
            # force_close() makes the connection end after this answer.
            response.force_close()
            response.headers["Connection"] = "close"


async def serve(app: web.Application, listen: Listen, cap: int) -> None:
    """Serve `app` until SIGTERM or SIGINT, then stop in order (see the module doc)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    drain = Drain()
    app.on_response_prepare.append(drain.on_response_prepare)
    runner = web.AppRunner(
        app,
        handle_signals=False,  # ours below: they only set a flag
        access_log_class=JsonAccessLogger,
        access_log=access_logger,
        keepalive_timeout=listen.keepalive_timeout,
        shutdown_timeout=listen.shutdown_timeout,
    )
    await runner.setup()
    # Here: client commands never load the app.
    from gateway.app_keys import METRICS, SETTINGS
    from gateway.edge.dispatch import DISPATCH
    from gateway.edge.inference_lane import InferenceLane, LaneCollector

    dispatch = app.get(DISPATCH)
    lane = None
    if dispatch is not None and runner.server is not None:
        runner.server.request_handler = dispatch  # deployed keys' calls skip the router
        if app[SETTINGS].inference_lane:
            lane = InferenceLane(
                app, runner.server, lambda: drain.on, listen.keepalive_timeout,
                dispatch.authenticator,
            )  # fmt: skip
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        metrics = app.get(METRICS)
        refused = metrics.refused_connections.inc if metrics is not None else None
        if metrics is not None and lane is not None:
            metrics.registry.register(LaneCollector(lane))
        site = CappedSite(runner, listen, cap, refused, lane)
        await site.start()
        logger.info("======== Running on %s ========", site.name)
        await stop.wait()
        logger.info("stopping: no new connections; answering what has arrived")
        await site.stop()
        drain.on = True
        await _grace(runner, lane, DRAIN_GRACE)
        if lane is not None:  # its calls in flight end before the app's resources close
            await lane.shutdown(listen.shutdown_timeout)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


async def _grace(runner: web.BaseRunner, lane: InferenceLane | None, seconds: float) -> None:
    """Wait until no client connection is left, or `seconds` have passed."""
    server = runner.server
    deadline = asyncio.get_running_loop().time() + seconds
    while (server is not None and server.connections) or (lane is not None and lane.connections):
        if asyncio.get_running_loop().time() >= deadline:
            return
        await asyncio.sleep(0.02)


def run(
    app: web.Application,
    listen: Listen,
    new_loop: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Raise the open-files limit, serve `app` on a fresh loop, and close the loop."""
    client_errors.install(LogBudget(lines=10, interval=60.0))
    cap = connection_cap(listen.max_connections, raise_open_files_limit())
    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(app, listen, cap))
    finally:
        _cancel_leftovers(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """As run_app does: cancel tasks still pending, and wait for them to end."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
