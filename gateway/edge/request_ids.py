"""Request ids and JSON access logs.

The id comes from the caller's `X-Request-ID` (when it is sane) or is made
here; it goes to the backend, back to the caller, and into the access log.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
access_logger = logging.getLogger("gateway.access")
REQUEST_ID = web.RequestKey("request_id", str)


# Ids are a random per-process prefix plus a counter: unique, and far cheaper than
# a uuid4 per request (which asks the kernel for randomness every time).
_PREFIX = uuid.uuid4().hex[:16]
_counter = itertools.count(1)


def request_id(request: web.Request) -> str:
    rid = request.get(REQUEST_ID)
    if rid is None:
        incoming = request.headers.get(REQUEST_ID_HEADER)
        rid = (incoming and sane_id(incoming)) or new_request_id()
        request[REQUEST_ID] = rid
    return rid


def sane_id(incoming: str) -> str | None:
    """A caller's request id, if it is one we pass on (else the gateway makes one)."""
    return incoming if _SANE_ID.fullmatch(incoming) else None


def new_request_id() -> str:
    return f"{_PREFIX}{next(_counter):016x}"


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer, errors and streams included, carries the id."""
    response.headers[REQUEST_ID_HEADER] = request_id(request)


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON object per request on the `gateway.access` logger.

    The request only records a tuple; the line is formatted and written with
    the others of its block (see BlockWriteHandler), off the request's path.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        try:
            key = request.match_info.get("key")  # type: ignore[attr-defined]
        except (AttributeError, AssertionError):
            key = None  # a request the HTTP parser refused never reached routing
        log_access(
            request.method, request.path, key, response.status, time_,
            request.content_length or 0, response.body_length, request.get(REQUEST_ID),
            request.remote,
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def log_access(
    method: str,
    path: str,
    key: str | None,
    status: int,
    seconds: float,
    bytes_in: int,
    bytes_out: int,
    rid: str | None,
    remote: str | None,
) -> None:
    """One access line (aiohttp's requests and the inference lane's calls alike)."""
    entry = (
        time.time(), method, path, key, status, round(seconds * 1000, 3), bytes_in, bytes_out,
        rid, remote,
    )  # fmt: skip
    if _handler is not None and access_logger.handlers == [_handler]:
        _handler.add(entry)
    else:
        access_logger.info(format_entry(entry))


# What json.dumps writes for a str (ensure_ascii): the line below is json.dumps of the
# entry's dict, field for field, without building the dict or walking it in Python.
_quote = json.encoder.encode_basestring_ascii
_stamp: list[object] = [None, ""]  # (second, its ISO 8601 text): one strftime per second


def _value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return _quote(value)
    kind = type(value)  # not isinstance: a bool is an int that json writes as true/false
    if kind is int or (kind is float and math.isfinite(value)):  # type: ignore[arg-type]
        return repr(value)  # as json.dumps writes them
    return json.dumps(value)


def format_entry(entry: tuple[object, ...]) -> str:
    """One access line: time, method, path, key, status, duration_ms, bytes_in,
    bytes_out, request_id, remote (a JSON object, compact, in that order)."""
    at, method, path, key, status, duration_ms, bytes_in, bytes_out, rid, remote = entry
    second = int(at)  # type: ignore[call-overload]
    if _stamp[0] != second:
        _stamp[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) + "Z"]
    return (
        f'{{"time":"{_stamp[1]}","method":{_value(method)},"path":{_value(path)},'
        f'"key":{_value(key)},"status":{_value(status)},"duration_ms":{_value(duration_ms)},'
        f'"bytes_in":{_value(bytes_in)},"bytes_out":{_value(bytes_out)},'
        f'"request_id":{_value(rid)},"remote":{_value(remote)}}}'
    )


class BlockWriteHandler(logging.StreamHandler[TextIO]):
    """Writes access lines in blocks: one write per flush, not one per request.

    Flushed when `max_lines` wait, and every `interval` by `flush_periodically`,
    so a quiet gateway's lines still appear promptly.
    """

    def __init__(self, stream: TextIO, max_lines: int = 256) -> None:
        super().__init__(stream)
        self.max_lines = max_lines
        self._lines: list[str | tuple[object, ...]] = []

    def add(self, entry: tuple[object, ...]) -> None:
        """A raw access entry, formatted at flush time."""
        self._lines.append(entry)
        if len(self._lines) >= self.max_lines:
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
        except (TypeError, ValueError, KeyError):  # a malformed record; logging's own policy
            self.handleError(record)
            return
        if len(self._lines) >= self.max_lines:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        self.acquire()
        try:
            lines, self._lines = self._lines, []
            self.stream.write(
                "".join(
                    line if isinstance(line, str) else format_entry(line) + self.terminator
                    for line in lines
                )
            )
            self.stream.flush()
        finally:
            self.release()


_handler: BlockWriteHandler | None = None


def configure_access_log() -> None:
    """Access lines are bare JSON on stdout, apart from the human-readable app log."""
    global _handler
    if _handler is not None:
        return
    _handler = BlockWriteHandler(sys.stdout)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger.addHandler(_handler)
    access_logger.propagate = False


async def flush_periodically(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: flush the access log every 0.2 s, and at shutdown."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(0.2)
            if _handler is not None:
                _handler.flush()

    task = asyncio.create_task(loop(), name="access-log-flush")
    yield
    task.cancel()
    await asyncio.wait({task})
    if _handler is not None:
        _handler.flush()
