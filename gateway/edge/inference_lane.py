"""Inference calls served on a lane of their own, in front of aiohttp.

aiohttp's request and response objects, its protocol's task and its writer cost more
CPU per call than everything the gateway itself does to relay one (see `make bench`,
section `cpu`). The lane is the asyncio protocol of every client connection: it parses
each request with httptools (llhttp, as the upstream pool does) and serves itself the
calls it can serve exactly as the app would:

    a POST to a path the app's router resolves to `proxy.invoke` for a deployed key,
    with a Content-Length body within GATEWAY_MAX_BODY_MB, no `Expect`, no
    `Content-Encoding`, no chunked body, no upgrade.

Such a call passes the same access check as through aiohttp (the inference class's:
`Authenticator.check_header`), then takes the same road (`proxy.serve_call`: wake,
admission, deadline, batching, backend, inference log), with the same per-key metrics,
JSON errors (`errors.answer_for`), request id and access-log line. Anything else
-- a management call, a malformed or oversized request, a body to decode -- and the
connection is handed to aiohttp's own protocol for good, with the raw bytes from the
first request the lane does not serve: aiohttp parses and answers it as if it had had
the connection from the start (so every answer and defence there stays as it is).
Requests pipelined behind a lane call wait their turn: answers leave in order.

Idle connections (before a first request or between two, a slowloris's unfinished
head included) close after GATEWAY_KEEPALIVE_TIMEOUT, checked by one sweep for all
connections; a body that does not arrive within GATEWAY_BODY_TIMEOUT is a 408.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from email.utils import formatdate
from functools import partial
from http import HTTPStatus
from typing import cast

import httptools
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.web_protocol import RequestHandler
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from yarl import URL

from gateway.app_keys import ROUTES, SETTINGS
from gateway.dataplane import proxy
from gateway.dataplane.backend_call import header_lines
from gateway.dataplane.backend_errors import backend_error_response
from gateway.dataplane.upstream import UpstreamResponse
from gateway.edge.auth import Authenticator, Scope
from gateway.edge.request_ids import (
    REQUEST_ID_HEADER,
    access_logger,
    log_access,
    new_request_id,
    sane_id,
)
from gateway.edge.telemetry import KeyMetrics
from gateway.errors import RequestTimeout, answer_for
from supervisor.deployment import Deployment

logger = logging.getLogger(__name__)

# Request headers the lane reads; the others pass by (none of them goes to a backend).
_CONTENT_TYPE = b"content-type"
_ACCEPT = b"accept"
_FORWARDED_FOR = b"x-forwarded-for"
_REQUEST_ID = b"x-request-id"
_TIMEOUT = proxy.REQUEST_TIMEOUT_HEADER.lower().encode()
_LENGTH = b"content-length"
_AUTHORIZATION = b"authorization"
# Headers that send a request to aiohttp (it decodes bodies, answers 100-continue).
_NOT_FOR_THE_LANE = frozenset((b"expect", b"content-encoding", b"transfer-encoding"))
_READ = frozenset(
    (_CONTENT_TYPE, _ACCEPT, _FORWARDED_FOR, _REQUEST_ID, _TIMEOUT, _LENGTH, _AUTHORIZATION)
)
# Headers aiohttp refuses to see twice (400): a request with one twice is aiohttp's.
_SINGLETONS = frozenset(name.encode() for name in SINGLETON_HEADERS)
_WATCHED = _READ | _NOT_FOR_THE_LANE | _SINGLETONS
_HTTP10, _HTTP11 = "HTTP/1.0 ", "HTTP/1.1 "
_SERVER = f"Server: {SERVER_SOFTWARE}\r\n"
# Calls read ahead of the one in flight (pipelined) before the lane stops reading.
_MAX_QUEUED = 16


class _HandOff(Exception):
    """Raised in a parser callback: this request is aiohttp's."""


class _Call:
    """One call the lane read: what serving it needs, and how its answer is framed."""

    __slots__ = ("body", "headers", "http10", "keep_alive", "key", "rid", "url")

    def __init__(
        self,
        key: str,
        url: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        keep_alive: bool,
        http10: bool,
    ) -> None:
        self.key = key
        self.url = url
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http10 = http10
        self.rid = ""

    @property
    def path(self) -> str:
        return self.url.decode("latin-1")


class _Sent:
    """What the lane wrote for one call: its status and body bytes (for the access log)."""

    __slots__ = ("body_length", "status")

    def __init__(self, status: int, body_length: int) -> None:
        self.status = status
        self.body_length = body_length


class _Date:
    """The Date header's line, made once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = ""

    def line(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._line = f"Date: {formatdate(second, usegmt=True)}\r\n"
        return self._line


class _Probe:
    """Just what the router reads to resolve a path (`UrlDispatcher.resolve`)."""

    def __init__(self, path: str) -> None:
        self.method = "POST"
        self.rel_url = URL.build(path=path, encoded=True)


class InferenceLane:
    """The lane of one listening site: its connections, its table of paths, its sweep."""

    # Paths remembered at most (deployed keys' and others'); past it the memory restarts.
    MAX_PATHS = 4096

    def __init__(
        self,
        app: web.Application,
        server: web.Server,
        draining: Callable[[], bool],
        keepalive_timeout: float,
        authenticator: Authenticator | None = None,
    ) -> None:
        settings = app[SETTINGS]
        self.app = app
        self.authenticator = authenticator  # None: access control is off
        self.server = server
        self.draining = draining
        self.keepalive_timeout = keepalive_timeout
        self.body_timeout = settings.body_timeout
        self.max_body = int(settings.max_body_mb * 1024 * 1024)
        # aiohttp refuses a line or field past this; a head that long is aiohttp's to refuse.
        self.max_head = settings.max_header_kb * 1024
        self.keep_trace = settings.backend_stack_traces
        self.connections: set[LaneConnection] = set()
        self.calls = 0  # served on the lane
        self.handoffs = 0  # connections given to aiohttp
        self.date = _Date()
        self._paths: dict[bytes, str | None] = {}
        self._routes: dict[str, Deployment] | None = None
        self._loop = asyncio.get_running_loop()
        self._sweeper: asyncio.TimerHandle | None = None
        # Idle connections close within half a second of the timeout, as aiohttp's timers do.
        self._sweep_every = max(0.05, min(keepalive_timeout / 8, 0.5))
        self._closed = False

    def __call__(self) -> LaneConnection:
        if self._sweeper is None and not self._closed:
            self._sweeper = self._loop.call_later(self._sweep_every, self._sweep)
        return LaneConnection(self)

    @property
    def routes(self) -> dict[str, Deployment]:
        routes = self._routes
        if routes is None:  # set at start-up; the same dict for the app's life
            routes = self._routes = self.app[ROUTES]
        return routes

    def key_for(self, path: bytes) -> str | None:
        """The deployed key a POST to `path` calls, when the router sends it to proxy.invoke."""
        try:
            key = self._paths[path]
        except KeyError:
            key = self._learn(path)
        return key if key is not None and key in self.routes else None

    def _learn(self, path: bytes) -> str | None:
        key = None
        if path.isascii() and not any(c in path for c in b"?%#"):
            match = _resolve_now(self.app.router, _Probe(path.decode()))
            if match is not None and match.handler is proxy.invoke:
                key = match.get("key")
        if len(self._paths) >= self.MAX_PATHS:
            self._paths.clear()
        self._paths[path] = key
        return key

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive timeout."""
        now = self._loop.time()
        limit = self.keepalive_timeout
        for conn in list(self.connections):
            if conn.idle_since is not None and now - conn.idle_since >= limit:
                conn.close()
        self._sweeper = (
            None if self._closed else self._loop.call_later(self._sweep_every, self._sweep)
        )

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now and the others once their calls end (or `timeout`)."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        deadline = self._loop.time() + timeout
        while self.connections:
            for conn in list(self.connections):
                if not conn.busy and not conn.receiving:
                    conn.close()
            if not self.connections or self._loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()


class LaneCollector:
    """The lane's two counters, read at scrape time (nothing is counted twice per call)."""

    def __init__(self, lane: InferenceLane) -> None:
        self.lane = lane

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "modelgw_inference_lane_calls",
            "Inference calls served on the gateway's own HTTP lane (the others went through"
            " aiohttp).",
            value=self.lane.calls,
        )
        yield CounterMetricFamily(
            "modelgw_inference_lane_handoffs",
            "Client connections the inference lane gave to aiohttp, at the first request"
            " it does not serve.",
            value=self.lane.handoffs,
        )


def _resolve_now(router: web.UrlDispatcher, probe: _Probe) -> web.UrlMappingMatchInfo | None:
    """The router's match for `probe`, computed without a loop turn.

    `UrlDispatcher.resolve` is a coroutine that never suspends for plain resources; one
    that would (a custom resource) gets no answer here, and its path stays aiohttp's.
    """
    coro = router.resolve(cast(web.Request, probe))
    try:
        coro.send(None)
    except StopIteration as done:
        match = done.value
        return match if isinstance(match, web.UrlMappingMatchInfo) else None
    coro.close()
    return None


class LaneConnection(asyncio.Protocol):
    """One client connection while the lane serves it (see the module doc)."""

    def __init__(self, lane: InferenceLane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.busy = False  # a call is being served
        self.idle_since: float | None = None  # set while waiting for a request
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._buf = bytearray()  # the raw bytes from the start of the unfinished request
        self._start = 0  # where that request starts in _buf
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._key = ""
        self._length = 0  # body bytes received
        self._end = 0  # where the request being received ends in _buf
        self._foreign = False  # a header the lane leaves to aiohttp
        self._head_at = 0.0
        self._in_body = False
        self._queue: deque[_Call] = deque()
        self._handed: bytearray | None = None  # raw bytes for aiohttp, once the lane is idle
        self._handler: RequestHandler | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._closing = False  # close after the answer being written
        self._eof = False  # the client sends nothing more
        self._writable: asyncio.Future[None] | None = None

    # -------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple | list) and peer else ""
        self.idle_since = self.lane._loop.time()
        self.lane.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lane.connections.discard(self)
        self._closing = True
        self._queue.clear()
        if self._body_timer is not None:
            self._body_timer.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self.transport = None

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self.lane._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def eof_received(self) -> bool:
        # Half-closed: what has arrived is answered, then the connection closes (True
        # keeps the transport open for the answers).
        self._eof = True
        self.idle_since = None
        return self.busy or self._handed is not None

    def data_received(self, data: bytes) -> None:
        handed = self._handed
        if handed is not None:  # waiting for the lane's last answer before aiohttp's turn
            handed += data
            return
        parser = self._parser
        if parser is None:
            return
        buf = self._buf
        buf += data
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _HandOff):
                logger.error("inference lane: a parser callback failed", exc_info=exc.__context__)
            self._hand_off()
            return
        except httptools.HttpParserError:
            self._hand_off()  # malformed: aiohttp answers it as it always has
            return
        if self._in_body:
            # The raw bytes of a call being received are never needed again (it is the
            # lane's): keep none of them, only where the next request starts.
            drop = min(len(buf), self._end)
            del buf[:drop]
            self._end -= drop
            self._start = 0
            if not self.busy:
                self._time_the_body()
            return
        if self._start:
            del buf[: self._start]  # what is left is the start of the next request
            self._start = 0
        if len(buf) > self.lane.max_head:
            self._hand_off()  # a head this long: aiohttp refuses it with its own 400

    # -------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._length = 0
        self._foreign = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in _WATCHED:
            if name in _NOT_FOR_THE_LANE:
                self._foreign = True
            elif name not in self._headers:
                self._headers[name] = value
            elif name in _SINGLETONS:
                self._foreign = True  # twice: aiohttp refuses the message (400)

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        lane = self.lane
        key = None
        declared = self._headers.get(_LENGTH)
        length = 0 if declared is None else int(declared)  # llhttp checked its digits
        if (
            parser.get_method() == b"POST"
            and not self._foreign
            and not parser.should_upgrade()
            and length <= lane.max_body
        ):
            key = lane.key_for(self._url)
        if key is None:
            raise _HandOff
        # Where this request ends in _buf, which holds its whole head by now: after the
        # first empty line (llhttp refuses bare LFs; empty lines before a request line
        # are skipped) and the Content-Length body. The next request starts there.
        buf = self._buf
        start = self._start
        while start < len(buf) and buf[start] in b"\r\n":
            start += 1
        self._end = buf.find(b"\r\n\r\n", start) + 4 + length
        self._key = key
        self._in_body = True
        self.idle_since = None
        self._head_at = lane._loop.time()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._length += len(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        self._start = self._end
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        call = _Call(
            self._key, self._url, self._headers, body, parser.should_keep_alive(),
            parser.get_http_version() == "1.0",
        )  # fmt: skip
        if self.busy:
            self._queue.append(call)
            if len(self._queue) >= _MAX_QUEUED and self.transport is not None:
                self.transport.pause_reading()  # resumed as the queue empties
        else:
            self._begin(call)

    # -------------------------------------------------------------- serving calls

    def _begin(self, call: _Call) -> None:
        self.busy = True
        self.lane.calls += 1
        self.lane._loop.create_task(self._serve(call))

    async def _serve(self, call: _Call) -> None:
        lane = self.lane
        started = lane._loop.time()
        incoming = call.headers.get(_REQUEST_ID)
        rid = None if incoming is None else sane_id(incoming.decode("latin-1"))
        call.rid = rid if rid is not None else new_request_id()
        call.keep_alive = call.keep_alive and not self._closing
        try:
            try:
                if lane.authenticator is not None:  # outside the call's metrics, as in aiohttp
                    raw = call.headers.get(_AUTHORIZATION)
                    await lane.authenticator.check_header(
                        "" if raw is None else raw.decode("latin-1"), self.remote, Scope.INFERENCE
                    )
                sent = await proxy.timed(lane.app, call.key, partial(self._invoke, call))
            except Exception as exc:
                transport = self.transport
                gone = transport is None or transport.is_closing()
                answer = answer_for(exc, "POST", call.path, gone)
                if answer.keep_alive is False:
                    call.keep_alive = False
                sent = self._send_response(call, answer)
            if access_logger.isEnabledFor(logging.INFO):
                log_access(
                    "POST", call.path, call.key, sent.status, lane._loop.time() - started,
                    len(call.body), sent.body_length, call.rid, self.remote,
                )  # fmt: skip
            writable = self._writable
            if writable is not None and not writable.done():
                await writable  # the client reads slower than we answer: no read-ahead
        finally:
            self._next()

    async def _invoke(self, call: _Call, timing: KeyMetrics | None) -> _Sent:
        deployment = proxy.deployment_of(self.lane.routes, call.key)  # undeployed since?
        headers = call.headers
        content_type = _text(headers.get(_CONTENT_TYPE))
        lines = header_lines(
            content_type, _text(headers.get(_ACCEPT)), _text(headers.get(_FORWARDED_FOR)),
            self.remote, call.rid,
        )  # fmt: skip
        scoring = proxy.Call(
            call.body,
            "application/json" if content_type is None else content_type,
            lines,
            call.rid,
            _text(headers.get(_TIMEOUT)),
        )
        return await proxy.serve_call(
            self.lane.app, deployment, scoring, timing, partial(self._deliver, call)
        )

    async def _deliver(self, call: _Call, answer: UpstreamResponse) -> _Sent:
        """Send a backend's answer: errors in our JSON shape, the rest as it came."""
        if answer.streaming:
            return await self._stream(call, answer)
        if answer.status >= 400:
            response = backend_error_response(
                answer.status, answer.headers, answer.body, self.lane.keep_trace
            )
            if answer.model_version is not None:
                response.headers[proxy.MODEL_VERSION_HEADER] = answer.model_version
            return self._send_response(call, response)
        body = answer.body
        head = self._head(call, answer.status, answer.headers, answer.model_version)
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self._write(head.encode(), body, call.keep_alive)
        return _Sent(answer.status, len(body))

    async def _stream(self, call: _Call, answer: UpstreamResponse) -> _Sent:
        """A large answer, relayed chunk by chunk (chunked; close-delimited to HTTP/1.0)."""
        chunked = not call.http10
        call.keep_alive = call.keep_alive and chunked
        head = self._head(call, answer.status, answer.headers, answer.model_version)
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else "\r\n"
        sent = 0
        try:
            self._write(head.encode(), b"", True)
            async for chunk in answer.iter_chunks():
                if self.transport is None:
                    raise ConnectionResetError("the client closed the connection mid-answer")
                sent += len(chunk)
                if chunked:
                    self._write(b"%x\r\n" % len(chunk), chunk + b"\r\n", True)
                else:
                    self._write(b"", chunk, True)
                writable = self._writable
                if writable is not None and not writable.done():
                    await writable
            self._write(b"0\r\n\r\n" if chunked else b"", b"", call.keep_alive)
        finally:
            answer.finish()
        return _Sent(answer.status, sent)

    def _head(
        self, call: _Call, status: int, headers: list[tuple[str, str]], version: str | None
    ) -> str:
        """The answer's head up to its framing header (Content-Length or chunked)."""
        head = f"{_HTTP10 if call.http10 else _HTTP11}{status} {_reason(status)}\r\n"
        for name, value in headers:
            head += f"{name}: {value}\r\n"
        if version is not None:
            head += f"{proxy.MODEL_VERSION_HEADER}: {version}\r\n"
        head += f"{REQUEST_ID_HEADER}: {call.rid}\r\n{self.lane.date.line(time.time())}{_SERVER}"
        if not call.keep_alive or self.lane.draining():
            head += "Connection: close\r\n"
        elif call.http10:
            head += "Connection: keep-alive\r\n"  # HTTP/1.0 closes unless told otherwise
        return head

    def _send_response(self, call: _Call, response: web.Response) -> _Sent:
        """Send one of our own (error) responses."""
        body = response.body if isinstance(response.body, bytes) else b""
        pairs = [
            (name, value)
            for name, value in response.headers.items()
            if name.lower() not in ("content-length", "connection", "transfer-encoding")
        ]
        head = self._head(call, response.status, pairs, None)
        head += f"Content-Length: {len(body)}\r\n\r\n"
        self._write(head.encode(), body, call.keep_alive)
        return _Sent(response.status, len(body))

    def _write(self, head: bytes, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if len(body) <= 16384:
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        if not keep_alive or self.lane.draining():
            self._closing = True

    def _next(self) -> None:
        """After an answer: the next pipelined call, aiohttp's turn, a close, or idle."""
        self.busy = False
        transport = self.transport
        if transport is None:
            return
        if self._closing:
            transport.close()
        elif self._queue:
            if len(self._queue) == _MAX_QUEUED:
                transport.resume_reading()
            self._begin(self._queue.popleft())
        elif self._handed is not None:
            self._give_to_aiohttp()
        elif self._in_body:  # the next call's body is still coming: its time starts now
            self._time_the_body()
        elif self._eof:
            transport.close()
        else:
            self.idle_since = self.lane._loop.time()

    def _time_the_body(self) -> None:
        """The body of the call being received has GATEWAY_BODY_TIMEOUT from now."""
        if self._body_timer is None:
            self._body_timer = self.lane._loop.call_later(
                self.lane.body_timeout, self._body_timed_out
            )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        transport = self.transport
        if transport is None or not self._in_body or self.busy:
            return
        self._parser = None  # nothing more is read on this connection
        self._in_body = False
        call = _Call(self._key, self._url, self._headers, b"", False, False)
        call.rid = new_request_id()
        exc = RequestTimeout("the request body did not arrive in time")
        sent = self._send_response(call, answer_for(exc, "POST", call.path, False))
        waited = self.lane._loop.time() - self._head_at
        timing = proxy.key_timing(self.lane.app, self._key)
        if timing is not None:
            timing.done(sent.status, waited)
        if access_logger.isEnabledFor(logging.INFO):
            log_access("POST", call.path, self._key, sent.status, waited, self._length,
                       sent.body_length, call.rid, self.remote)  # fmt: skip
        transport.close()

    # -------------------------------------------------------------- aiohttp's turn

    def _hand_off(self) -> None:
        """From the request at `_start` on, the connection is aiohttp's."""
        self._parser = None
        self.idle_since = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._handed = self._buf[self._start :]
        self._buf = bytearray()
        if not self.busy:
            self._give_to_aiohttp()

    def _give_to_aiohttp(self) -> None:
        transport = self.transport
        raw, self._handed = self._handed, None
        if transport is None or raw is None:
            return
        self.lane.connections.discard(self)
        self.lane.handoffs += 1
        handler = self.lane.server()
        self._handler = handler
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if raw:
            handler.data_received(bytes(raw))

    @property
    def receiving(self) -> bool:
        """A call's body is arriving (at shutdown it is still answered)."""
        return self._in_body

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _reason(status: int) -> str:
    return _REASONS.get(status, "Unknown")


def _text(value: bytes | None) -> str | None:
    """A header value as text, byte for byte (latin-1), or None."""
    return None if value is None else value.decode("latin-1")


_REASONS = {int(s): s.phrase for s in HTTPStatus}
