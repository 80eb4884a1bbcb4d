"""Client mistakes cost one log line, and only a bounded number of them.

A malformed request (a broken HTTP message, a body that is not what its
Content-Encoding says, a client that leaves mid-body) is the client's problem:
it answers 4xx and logs one line without a traceback, at most `LogBudget.lines`
of them per `LogBudget.interval`; the rest are counted and summed up in the next
line that is allowed. Otherwise a scanner makes the gateway write a traceback
per request (2,000 requests were 1.1 MB of stderr).

`MalformedRequestFilter` does this for what aiohttp's HTTP server logs itself
(`aiohttp.server`: errors of the HTTP parser, before any handler runs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

logger = logging.getLogger(__name__)

# What a client can cause: a broken message, a broken body, a connection it dropped.
CLIENT_FAULTS: tuple[type[BaseException], ...] = (
    HttpProcessingError,
    RequestPayloadError,
    ConnectionResetError,
    BrokenPipeError,
)


class LogBudget:
    """At most `lines` log lines per `interval` seconds; counts what it refuses."""

    def __init__(
        self, lines: int = 10, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lines = lines
        self.interval = interval
        self._clock = clock
        self._window_start = clock()
        self._used = 0
        self._suppressed = 0
        self._lock = threading.Lock()  # logging may happen on any thread

    def take(self) -> tuple[bool, int]:
        """(may log now, lines suppressed since the last one that was allowed)."""
        with self._lock:
            now = self._clock()
            if now - self._window_start >= self.interval:
                self._window_start, self._used = now, 0
            if self._used >= self.lines:
                self._suppressed += 1
                return False, 0
            self._used += 1
            suppressed, self._suppressed = self._suppressed, 0
            return True, suppressed


def describe(exc: BaseException) -> str:
    """One line for a client fault: aiohttp's messages span several lines."""
    fault = exc.__cause__ if isinstance(exc, RequestPayloadError) and exc.__cause__ else exc
    text = fault.message if isinstance(fault, HttpProcessingError) else str(fault)
    return (" ".join(str(text).split()) or type(fault).__name__)[:200]


def client_fault_in(exc_info: object) -> BaseException | None:
    """The client fault a log record's exc_info carries, if that is what it carries."""
    exc = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) == 3 else exc_info
    return exc if isinstance(exc, CLIENT_FAULTS) else None


class MalformedRequestFilter(logging.Filter):
    """Turns aiohttp.server's traceback for a malformed request into one budgeted line."""

    def __init__(self, budget: LogBudget) -> None:
        super().__init__()
        self.budget = budget

    def filter(self, record: logging.LogRecord) -> bool:
        exc = client_fault_in(record.exc_info)
        if exc is None:
            return True  # a real error of aiohttp's: keep it whole
        allowed, suppressed = self.budget.take()
        if not allowed:
            return False
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "a client"
        record.msg = "malformed request from %s: %s%s"
        record.args = (remote, describe(exc), suppressed_note(suppressed))
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def suppressed_note(count: int) -> str:
    return f" ({count} similar lines suppressed)" if count else ""


def install(budget: LogBudget) -> None:
    """Filter aiohttp's server logger (once per process)."""
    server_logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_logger.filters):
        server_logger.addFilter(MalformedRequestFilter(budget))
