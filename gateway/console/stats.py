"""Traffic figures for the console: requests/s, error rate and latency quantiles.

A sampler copies the request counters and latency histograms of the gateway's
Prometheus registry every few seconds into a bounded ring, off the hot path
(the proxy keeps updating its counters as before). Rates and quantiles are
differences between two samples, computed by the pure functions below the way
Prometheus' `rate()` and `histogram_quantile()` would, so the page shows the
last minutes as soon as it opens, without scraping /metrics itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.app_keys import METRICS
from gateway.edge.telemetry import LATENCY_BUCKETS, GatewayMetrics

logger = logging.getLogger(__name__)

INTERVAL_S = 5.0
HISTORY_S = 15 * 60.0
SUMMARY_WINDOW_S = 5 * 60.0


@dataclass(frozen=True, slots=True)
class KeyCounts:
    """Cumulative counters of one deployment key at one moment."""

    requests: float
    client_errors: float  # 4xx answers
    errors: float  # 5xx answers
    buckets: tuple[float, ...]  # cumulative counts per LATENCY_BUCKETS bound, then +Inf


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic seconds, for rates
    wall: float  # epoch seconds, for the page's time axis
    keys: dict[str, KeyCounts]


def read_counts(metrics: GatewayMetrics) -> dict[str, KeyCounts]:
    """The current request counters and latency buckets of every key."""
    requests: dict[str, list[float]] = {}
    for family in metrics.requests.collect():
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            totals = requests.setdefault(sample.labels["key"], [0.0, 0.0, 0.0])
            code = sample.labels["code"]
            totals[0] += sample.value
            if code.startswith("4"):
                totals[1] += sample.value
            elif code.startswith("5"):
                totals[2] += sample.value
    buckets: dict[str, dict[float, float]] = {}
    for family in metrics.latency.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets.setdefault(sample.labels["key"], {})[bound] = sample.value
    counts = {}
    for key in requests.keys() | buckets.keys():
        by_bound = buckets.get(key, {})
        total, client, server = requests.get(key, [0.0, 0.0, 0.0])
        counts[key] = KeyCounts(
            total, client, server, tuple(by_bound.get(b, 0.0) for b in (*LATENCY_BUCKETS, math.inf))
        )
    return counts


def quantile(q: float, bounds: Sequence[float], cumulative: Sequence[float]) -> float | None:
    """The q-quantile of a histogram's cumulative bucket counts, interpolated linearly
    inside its bucket as Prometheus does; None without observations.

    `bounds` are the finite upper bounds; `cumulative` has one more entry, +Inf.
    A quantile in the +Inf bucket is reported as the highest finite bound.
    """
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=False):
        if count >= rank:
            inside = count - below
            if inside <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / inside
        lower, below = bound, count
    return bounds[-1] if bounds else None


def window(old: KeyCounts | None, new: KeyCounts, seconds: float) -> dict[str, float | None]:
    """Requests/s, error rates and p50/p99 (ms) of what happened between two samples.

    `old` is None for a key that had no counters yet; a key whose counters went
    down was undeployed and deployed again, and counts from zero as well.
    """
    if old is None or new.requests < old.requests:
        old = KeyCounts(0.0, 0.0, 0.0, tuple(0.0 for _ in new.buckets))
    requests = new.requests - old.requests
    cumulative = [n - o for n, o in zip(new.buckets, old.buckets, strict=True)]
    p50 = quantile(0.5, LATENCY_BUCKETS, cumulative)
    p99 = quantile(0.99, LATENCY_BUCKETS, cumulative)
    return {
        "requests": requests,
        "rps": requests / seconds if seconds > 0 else None,
        "error_rate": (new.errors - old.errors) / requests if requests else None,
        "client_error_rate": (
            (new.client_errors - old.client_errors) / requests if requests else None
        ),
        "p50_ms": None if p50 is None else p50 * 1000.0,
        "p99_ms": None if p99 is None else p99 * 1000.0,
    }


def summary(samples: Sequence[Sample], now: Sample, window_s: float) -> dict[str, Any]:
    """Per key: the figures over the last `window_s` seconds (or since the first sample)."""
    start = next((s for s in samples if now.at - s.at <= window_s), None)
    seconds = now.at - start.at if start is not None else 0.0
    out: dict[str, Any] = {}
    for key, counts in now.keys.items():
        old = start.keys.get(key) if start is not None else None
        out[key] = {**window(old, counts, seconds), "seconds": seconds}
    return out


def series(samples: Sequence[Sample], key: str) -> list[dict[str, Any]]:
    """One point per sampling interval of `key`: the figures of that interval."""
    points = []
    for old, new in itertools.pairwise(samples):
        counts = new.keys.get(key)
        if counts is None:
            continue
        point: dict[str, Any] = {"t": new.wall}
        point.update(window(old.keys.get(key), counts, new.at - old.at))
        points.append(point)
    return points


class Sampler:
    """Keeps the last HISTORY_S seconds of samples, one every `interval` seconds."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        interval: float = INTERVAL_S,
        history: float = HISTORY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self.interval = interval
        self._clock = clock
        self.samples: deque[Sample] = deque(maxlen=int(history / interval) + 1)
        self._task: asyncio.Task[None] | None = None

    def take(self) -> Sample:
        return Sample(self._clock(), time.time(), read_counts(self._metrics))

    def record(self) -> None:
        self.samples.append(self.take())

    async def _run(self) -> None:
        while True:
            try:
                self.record()
            except Exception:  # a bug here must not end the figures for good
                logger.exception("console: sampling the metrics failed")
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-stats-sampler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def stats(self, key: str | None = None, window_s: float = SUMMARY_WINDOW_S) -> dict[str, Any]:
        """The body of GET /ui/api/stats: a summary per key, and `key`'s series."""
        samples = list(self.samples)
        now = self.take()
        body: dict[str, Any] = {
            "interval_s": self.interval,
            "window_s": window_s,
            "now": now.wall,
            "keys": summary(samples, now, window_s),
        }
        if key is not None:
            # A point for the moments since the last sample only once they make a fair
            # interval: a fraction of a second of traffic reads as a dip or a spike.
            fresh = not samples or now.at - samples[-1].at >= self.interval / 2
            body["series"] = series([*samples, now] if fresh else samples, key)
        return body


SAMPLER = web.AppKey("console_sampler", Sampler)


async def sampler_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx entry: sample while the app runs."""
    sampler = Sampler(app[METRICS])
    sampler.start()
    app[SAMPLER] = sampler
    yield
    await sampler.close()
