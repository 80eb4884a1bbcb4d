"""A lean keep-alive HTTP/1.1 client for the gateway's own loopback backends.

The hot path spends most of its time in the HTTP client. aiohttp's client is
general (cookies, redirects, proxies, tracing, URL handling); calls to our own
backends on 127.0.0.1 need none of that. This pool keeps idle connections per
backend, writes each request in one `write`, and parses the answer with
httptools (the C parser uvicorn uses). Answers up to `stream_threshold` bytes
are returned whole; larger or chunked ones are streamed, with back-pressure.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httptools

# Answer headers that describe one hop (or that aiohttp sets itself): the parser drops
# them, so an answer's `headers` are the end-to-end ones a caller may see.
HOP_BY_HOP = frozenset(
    h.lower().encode()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
        "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length", "Date", "Server",
    )
)  # fmt: skip


class UpstreamError(Exception):
    """The backend could not be reached or broke the connection."""


class UpstreamConnectError(UpstreamError):
    """The backend refused the connection (nothing was sent)."""


class UpstreamConnectTimeout(UpstreamError, TimeoutError):
    """The backend did not accept the connection in time (nothing was sent).

    A TimeoutError, so callers that map timeouts to 504 treat it as one, never as
    "refused": a backend that is alive but whose accept queue is full is slow, not gone.
    """


class UpstreamUnanswered(UpstreamError):
    """The request was sent and no byte of an answer came back.

    The backend may or may not have started on it, so sending it again (to the
    same backend or another) is safe only for a side-effect-free backend.
    """


class UpstreamDropped(UpstreamUnanswered):
    """The backend closed the connection before any byte of an answer."""


class UpstreamAborted(UpstreamUnanswered):
    """The gateway dropped the call before any answer: its backend was declared hung."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[str, str]]  # end-to-end only (not HOP_BY_HOP)
    body: bytes = b""
    streaming: bool = False
    _conn: _Connection | None = field(default=None, repr=False)
    # Called once when a streamed body has been read to its end or abandoned, so a
    # caller's bookkeeping (in-flight counts, latency) covers the whole stream.
    on_finish: Callable[[], None] | None = field(default=None, repr=False)
    # The model version whose backend produced this answer (set by call_backend).
    model_version: str | None = None

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body of a streamed answer, chunk by chunk."""
        try:
            if not self.streaming or self._conn is None:
                if self.body:
                    yield self.body
                return
            async for chunk in self._conn.stream():
                yield chunk
        finally:
            self.finish()

    async def read_all(self) -> bytes:
        """The whole body, streamed or not."""
        if not self.streaming:
            self.finish()
            return self.body
        return b"".join([chunk async for chunk in self.iter_chunks()])

    def finish(self) -> None:
        callback, self.on_finish = self.on_finish, None
        if callback is not None:
            callback()


class _Connection(asyncio.Protocol):
    """One TCP connection to a backend and the parser of its answers."""

    def __init__(self, pool: UpstreamPool, key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.deadline = 0.0  # loop time by which the answer's head must have come
        self.used = False
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._length: int | None = None  # the answer's Content-Length
        self._body: list[bytes] = []
        self._received = False
        self._streaming = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._chunk_ready: asyncio.Event | None = None
        self._done = False
        self._keep_alive = True
        self._error: Exception | None = None  # why the connection failed, once it has

    # ----------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"malformed answer from the backend: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._all.discard(self)
        if not self._done:
            if self._received:
                self._fail(UpstreamError("the backend closed the connection mid-answer"))
            else:
                self._fail(UpstreamDropped("the backend closed the connection"))

    def pause_writing(self) -> None:  # a large request body: the kernel buffers it
        pass

    def resume_writing(self) -> None:
        pass

    # ------------------------------------------------------ parser callbacks

    def on_status(self, status: bytes) -> None:
        self._status = self.parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered in HOP_BY_HOP:
            if lowered == b"content-length":
                self._length = int(value)
            return
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._keep_alive = self.parser.should_keep_alive()
        length = self._length
        if length is None or length > self.pool.stream_threshold:
            if self._status not in (204, 304) and length != 0:
                self._streaming = True
                self._chunk_ready = asyncio.Event()
                waiter, self._waiter = self._waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(
                        UpstreamResponse(self._status, self._headers, b"", True, self)
                    )

    def on_body(self, body: bytes) -> None:
        if self._streaming:
            self._chunks.append(body)
            self._buffered += len(body)
            if self._buffered > self.pool.stream_threshold and self.transport is not None:
                self.transport.pause_reading()
            assert self._chunk_ready is not None
            self._chunk_ready.set()
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._done = True
        if self._streaming:
            assert self._chunk_ready is not None
            self._chunk_ready.set()
            return
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(UpstreamResponse(self._status, self._headers, b"".join(self._body)))
        self._release()

    # -------------------------------------------------------------- calls

    def send(self, data: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._status, self._headers, self._body, self._length = 0, [], [], None
        self._received = self._done = self._streaming = False
        self._chunks.clear()
        self._buffered = 0
        self.transport.write(data)
        return self._waiter

    async def stream(self) -> AsyncIterator[bytes]:
        assert self._chunk_ready is not None
        try:
            while True:
                while self._chunks:
                    chunk = self._chunks.popleft()
                    self._buffered -= len(chunk)
                    if self.transport is not None and self._buffered <= self.pool.stream_threshold:
                        self.transport.resume_reading()
                    yield chunk
                if self._done:
                    break
                if self.closed:
                    raise self._error or UpstreamError(
                        "the backend closed the connection mid-answer"
                    )
                self._chunk_ready.clear()
                try:
                    async with asyncio.timeout(self.pool.read_timeout):
                        await self._chunk_ready.wait()
                except TimeoutError:
                    raise UpstreamError("the backend stopped sending its answer") from None
        finally:
            if self._done:
                self._release()
            else:
                self.abort()

    def drop(self, reason: str) -> bool:
        """Fail the call on this connection, if any, and close it; True if there was one."""
        busy = self._waiter is not None or (self._streaming and not self._done)
        if self._received:  # part of an answer came: it cannot be sent anywhere again
            self._fail(UpstreamError(f"{reason} (mid-answer)"))
        else:
            self._fail(UpstreamAborted(reason))
        return busy

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self._chunk_ready is not None:
            self._chunk_ready.set()
        self.abort()

    def _release(self) -> None:
        if self._keep_alive and not self.closed:
            self.pool._put_back(self)
        else:
            self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections per backend; one request at a time per connection."""

    def __init__(
        self,
        read_timeout: float,
        connect_timeout: float = 5.0,
        keepalive: float = 4.0,
        max_idle: int = 256,
        stream_threshold: int = 1 << 20,
        resend_dropped: bool = True,
    ) -> None:
        self.read_timeout = read_timeout
        self.connect_timeout = connect_timeout
        # Below uvicorn's 5 s keep-alive, so we drop an idle connection before the
        # backend does and rarely race its close.
        self.keepalive = keepalive
        self.max_idle = max_idle
        self.stream_threshold = stream_threshold
        # Whether a request may be sent a second time when no byte of an answer came
        # back: here, when a reused idle connection turns out to be closed by the
        # backend; in `call_backend`, to another replica when this one died or hung.
        # HTTP cannot tell whether the backend had started on it, so this is safe only
        # for side-effect-free backends: MLflow's scoring server is (a prediction has
        # no effect); a custom backend command may not be. The launcher decides.
        self.resend_dropped = resend_dropped
        self.resent = 0  # how many times that happened (tests and diagnostics)
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()
        # One timer for every call waiting for an answer, not one per call: it ticks
        # while calls wait and fails those past their deadline, at most a tick late.
        self._tick = min(1.0, max(0.05, read_timeout / 8))
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(
        self, host: str, port: int, method: str, path: str, headers: str, body: bytes | None
    ) -> UpstreamResponse:
        """Send one request. `headers` are extra `Name: value\\r\\n` lines."""
        payload = body or b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Length: {len(payload)}\r\n{headers}\r\n"
        ).encode("latin-1")
        data = head + payload
        conn, reused = await self._acquire(host, port)
        try:
            return await self._exchange(conn, data)
        except UpstreamDropped:
            if not reused or not self.resend_dropped:
                raise
            # The backend closed an idle connection as we reused it (its keep-alive
            # timer and our reuse raced): no byte of an answer came back. Sending again
            # on a fresh connection is safe only because the backend is side-effect
            # free (see `resend_dropped`); a fresh connection is never re-sent.
            self.resent += 1
            conn, _ = await self._connect(host, port)
            return await self._exchange(conn, data)

    async def _exchange(self, conn: _Connection, data: bytes) -> UpstreamResponse:
        waiter = conn.send(data)
        loop = waiter.get_loop()
        conn.deadline = loop.time() + self.read_timeout
        if self._sweeper is None:
            self._sweeper = loop.call_later(self._tick, self._sweep, loop)
        try:
            return await waiter
        except asyncio.CancelledError:
            conn.abort()
            raise

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the calls whose answer is overdue; tick again while any call waits."""
        self._sweeper = None
        now, waiting = loop.time(), False
        for conn in list(self._all):
            waiter = conn._waiter
            if waiter is None:
                continue
            if now >= conn.deadline:
                _expire(waiter, conn)
            else:
                waiting = True
        if waiting:
            self._sweeper = loop.call_later(self._tick, self._sweep, loop)

    async def _acquire(self, host: str, port: int) -> tuple[_Connection, bool]:
        idle = self._idle.get((host, port))
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn, True
            conn.abort()
        return await self._connect(host, port)

    async def _connect(self, host: str, port: int) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        key = (host, port)
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: _Connection(self, key), host, port)
        except TimeoutError as exc:  # before OSError: TimeoutError is one of its subclasses
            raise UpstreamConnectTimeout(
                f"{host}:{port} did not accept a connection in {self.connect_timeout:g}s"
            ) from exc
        except OSError as exc:
            raise UpstreamConnectError(f"{host}:{port} refused the connection: {exc}") from exc
        self._all.add(conn)
        return conn, False

    def _put_back(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def abort(self, host: str, port: int, reason: str) -> int:
        """Fail every call waiting on the backend at (host, port) now, and close its
        connections; returns how many calls were failed.

        For a backend declared hung: its calls would otherwise wait for its stop or
        their own timeout. A call with no answer byte yet fails with UpstreamAborted,
        which the caller may send to another replica.
        """
        key = (host, port)
        self._idle.pop(key, None)
        return sum(conn.drop(reason) for conn in list(self._all) if conn.key == key)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.abort()
        self._all.clear()
        self._idle.clear()


def _expire(waiter: asyncio.Future[UpstreamResponse], conn: _Connection) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the backend did not answer in time"))
        conn.abort()
