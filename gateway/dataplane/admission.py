"""Admission control: concurrency slots, a bounded queue, and callers' deadlines.

Opt-in per deployment (`max_concurrency` per replica, `max_queue`). A call takes
a slot when one is free; otherwise it waits in a FIFO queue, and a call that
finds the queue full is refused at once (429 with Retry-After) instead of
waiting until every caller times out. A queued call whose deadline passes is
answered 504 and never sent. Deployments without these options have no
`Admission` and pay one dict look-up.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Any

from gateway.errors import BackendTimeout, BadRequest, TooManyRequests
from supervisor.deployment import Deployment

REQUEST_TIMEOUT_HEADER = "X-Request-Timeout"


def deadline_of(raw: str | None, cap: float) -> float:
    """The loop-clock deadline of a call: now plus its `X-Request-Timeout`, at most `cap`."""
    seconds = cap
    if raw is not None:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise BadRequest(
                f"{REQUEST_TIMEOUT_HEADER} must be a positive number of seconds, not {raw[:40]!r}"
            )
        seconds = min(seconds, cap)
    return asyncio.get_running_loop().time() + seconds


class Admission:
    """The slots and the waiting line of one deployment."""

    __slots__ = ("_waiters", "active", "deployment", "max_concurrency", "max_queue",
                 "queue_time", "shed", "shed_calls")  # fmt: skip

    def __init__(
        self,
        deployment: Deployment,
        max_concurrency: int,
        max_queue: int,
        queue_time: Any = None,
        shed: Any = None,
    ) -> None:
        self.deployment = deployment
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        # Prometheus children (a histogram, a counter), bound once; None in unit tests.
        self.queue_time = queue_time
        self.shed = shed
        self.active = 0
        self.shed_calls = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def slots(self) -> int:
        """Calls that may be in flight: per routable replica (at least one, so a
        deployment that is waking up admits calls that then wait for it)."""
        routable = sum(1 for r in self.deployment.replicas if r.routable)
        return self.max_concurrency * max(1, routable)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def describe(self) -> dict[str, Any]:
        return {
            "max_concurrency": self.max_concurrency,
            "max_queue": self.max_queue,
            "in_flight": self.active,
            "queued": len(self._waiters),
            "shed": self.shed_calls,
        }

    async def enter(self, deadline: float) -> None:
        """Take a slot, waiting in line until `deadline` (loop clock) at most.

        Raises a 429 when the line is full and a 504 when the deadline passes in it.
        """
        if self.active < self.slots() and not self._waiters:
            self.active += 1
            if self.queue_time is not None:
                self.queue_time.observe(0.0)
            return
        if len(self._waiters) >= self.max_queue:
            self.shed_calls += 1
            if self.shed is not None:
                self.shed.inc()
            raise TooManyRequests(
                f"{self.deployment.key} is at capacity ({self.active} call(s) in flight,"
                f" {len(self._waiters)} waiting, max_queue={self.max_queue}); retry shortly",
                headers={"Retry-After": "1"},
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        started = loop.time()
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # handed a slot in the same instant: give it back
            else:
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            if isinstance(exc, TimeoutError):
                raise BackendTimeout(
                    f"the call's deadline passed after {loop.time() - started:.3f} s waiting"
                    f" for a free slot of {self.deployment.key}; it was not sent"
                ) from None
            raise
        finally:
            if self.queue_time is not None:
                self.queue_time.observe(loop.time() - started)

    def leave(self) -> None:
        """Free a slot and hand it to the oldest waiting call."""
        self.active -= 1
        self.wake()

    def wake(self) -> None:
        """Hand free slots to waiting calls, oldest first (also after a scale-up)."""
        while self._waiters and self.active < self.slots():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.active += 1
                waiter.set_result(None)
