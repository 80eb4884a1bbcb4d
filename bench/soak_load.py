"""The soak's steady load: N workers posting 1-row calls, every outcome kept.

wrk counts; the soak must know which call failed, why, and when, and which
answered call later went missing from the inference log, so each call carries
its own X-Request-ID and leaves one `Outcome`. A worker pauses 50 ms after a
failure, as a client's retry delay would, so a gateway that is down is not
hammered in a tight loop (and the failure counts say something about time).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

FAILURE_PAUSE = 0.05


@dataclass(slots=True)
class Outcome:
    """One call: when it was sent (seconds since the soak's t0), how long it took,
    its status (0: no HTTP answer) and, for a failure, its cause."""

    request_id: str
    sent: float
    took: float
    status: int
    cause: str


def cause_of(status: int, body: bytes) -> str:
    """`503 model_not_ready`, `502 backend_error`...: the status and the gateway's error code."""
    try:
        code = json.loads(body).get("error", "")
    except (ValueError, AttributeError):
        code = ""
    return f"{status} {code}".strip() if isinstance(code, str) else str(status)


def cause_of_exception(exc: BaseException) -> str:
    """Transport failures by kind: what a client would see with the gateway away."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "client timeout"
    if isinstance(exc, aiohttp.ClientOSError):
        return "connection reset"
    return f"client error {type(exc).__name__}"


@dataclass
class Load:
    """`concurrency` workers on one pooled session until `stop` is set."""

    url: str
    body: bytes
    concurrency: int
    run_id: str
    t0: float
    timeout: float = 30.0
    outcomes: list[Outcome] = field(default_factory=list)
    _count: int = 0

    def _next_id(self) -> str:
        self._count += 1
        return f"soak-{self.run_id}-{self._count}"

    async def run(self, stop: asyncio.Event) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [
                asyncio.create_task(self._worker(session, stop), name=f"soak-load-{i}")
                for i in range(self.concurrency)
            ]
            try:
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        headers = {"Content-Type": "application/json"}
        while not stop.is_set():
            rid = self._next_id()
            sent = time.monotonic()
            try:
                async with session.post(
                    self.url, data=self.body, headers={**headers, "X-Request-ID": rid}
                ) as resp:
                    data = await resp.read()
                    status = resp.status
                cause = "" if 200 <= status < 300 else cause_of(status, data)
            except (TimeoutError, aiohttp.ClientError) as exc:
                status, cause = 0, cause_of_exception(exc)
            done = time.monotonic()
            self.outcomes.append(Outcome(rid, sent - self.t0, done - sent, status, cause))
            if cause:
                await asyncio.sleep(FAILURE_PAUSE)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(
    outcomes: list[Outcome], missing: set[str], start: float, end: float
) -> dict[str, Any]:
    """Counts, latency of the answered calls, failures by cause and the longest time
    without a 2xx answer, for the calls sent in [start, end)."""
    ok = [o for o in outcomes if not o.cause]
    took = [o.took * 1000 for o in ok]
    answers = sorted(o.sent + o.took for o in ok)
    edges = [start, *(t for t in answers if start <= t < end), end]
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "non_2xx": len(outcomes) - len(ok),
        "ok_per_s": round(len(ok) / (end - start), 1) if end > start else None,
        "p50_ms": percentile(took, 0.50),
        "p99_ms": percentile(took, 0.99),
        "max_ms": max(took) if took else None,
        "longest_without_2xx_s": round(max(b - a for a, b in itertools.pairwise(edges)), 2),
        "by_cause": dict(Counter(o.cause for o in outcomes if o.cause).most_common()),
        "missing_from_log": sum(1 for o in ok if o.request_id in missing),
    }
