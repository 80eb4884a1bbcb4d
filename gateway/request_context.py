"""Request ids and JSON access logs.

The id comes from the caller's `X-Request-ID` (when it is sane) or is made
here; it goes to the backend, back to the caller, and into the access log.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import time
import uuid

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
        rid = (
            incoming
            if incoming and _SANE_ID.fullmatch(incoming)
            else f"{_PREFIX}{next(_counter):016x}"
        )
        request[REQUEST_ID] = rid
    return rid


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer, errors and streams included, carries the id."""
    response.headers[REQUEST_ID_HEADER] = request_id(request)


class JsonAccessLogger(AbstractAccessLogger):
    """One JSON object per request on the `gateway.access` logger."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_: float) -> None:
        try:
            key = request.match_info.get("key")  # type: ignore[attr-defined]
        except (AttributeError, AssertionError):
            key = None  # a request the HTTP parser refused never reached routing
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
            "method": request.method,
            "path": request.path,
            "key": key,
            "status": response.status,
            "duration_ms": round(time_ * 1000, 3),
            "bytes_in": request.content_length or 0,
            "bytes_out": response.body_length,
            "request_id": request.get(REQUEST_ID),
            "remote": request.remote,
        }
        self.logger.info(json.dumps(entry, separators=(",", ":")))

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def configure_access_log() -> None:
    """Access lines are bare JSON on stdout, apart from the human-readable app log."""
    if access_logger.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_logger.addHandler(handler)
    access_logger.propagate = False
