"""The console's traffic figures: rates and quantiles from two samples of the real
Prometheus registry, computed as Prometheus' rate() and histogram_quantile() would."""

from __future__ import annotations

import math

import pytest

from gateway.console.stats import (
    KeyCounts,
    Sample,
    Sampler,
    quantile,
    read_counts,
    series,
    summary,
    window,
)
from gateway.edge.telemetry import LATENCY_BUCKETS, GatewayMetrics


def test_quantile_interpolates_inside_its_bucket() -> None:
    bounds = [0.1, 0.2, 0.4]
    # 10 observations <= 0.1, 10 more in (0.1, 0.2], none above.
    cumulative = [10.0, 20.0, 20.0, 20.0]
    assert quantile(0.5, bounds, cumulative) == pytest.approx(0.1)
    assert quantile(0.75, bounds, cumulative) == pytest.approx(0.15)
    assert quantile(0.25, bounds, cumulative) == pytest.approx(0.05)


def test_quantile_without_observations_or_beyond_the_last_bound() -> None:
    assert quantile(0.5, [0.1, 0.2], [0.0, 0.0, 0.0]) is None
    # Everything slower than the last finite bound: the bound is the best answer there is.
    assert quantile(0.99, [0.1, 0.2], [0.0, 0.0, 4.0]) == 0.2


def test_counts_come_from_the_gateways_own_registry() -> None:
    metrics = GatewayMetrics()
    timing = metrics.for_key("m-1")
    for _ in range(8):
        timing.done(200, 0.003)
    timing.done(404, 0.0004)
    timing.done(503, 2.0)
    counts = read_counts(metrics)["m-1"]
    assert (counts.requests, counts.client_errors, counts.errors) == (10, 1, 1)
    assert len(counts.buckets) == len(LATENCY_BUCKETS) + 1
    assert counts.buckets[-1] == 10
    assert counts.buckets[LATENCY_BUCKETS.index(0.0005)] == 1
    assert counts.buckets[LATENCY_BUCKETS.index(0.005)] == 9


def _counts(requests: float, errors: float, fast: float) -> KeyCounts:
    """`requests` calls so far: `fast` of them took 0.5-1 ms, the rest 50-100 ms."""
    buckets = []
    for bound in (*LATENCY_BUCKETS, math.inf):
        buckets.append(0.0 if bound < 0.001 else fast if bound < 0.1 else requests)
    return KeyCounts(requests, 0.0, errors, tuple(buckets))


def test_window_is_the_difference_of_two_samples() -> None:
    old, new = _counts(100, 1, 100), _counts(200, 11, 150)
    figures = window(old, new, 10.0)
    assert figures["requests"] == 100
    assert figures["rps"] == pytest.approx(10.0)
    assert figures["error_rate"] == pytest.approx(0.1)
    # Of the 100 new calls, 50 took under 1 ms and 50 between 50 and 100 ms.
    assert figures["p50_ms"] == pytest.approx(1.0)
    assert 50.0 < figures["p99_ms"] <= 100.0


def test_a_counter_reset_counts_from_zero() -> None:
    # The key was undeployed (its series forgotten) and deployed again.
    figures = window(_counts(500, 5, 500), _counts(20, 2, 20), 10.0)
    assert figures["requests"] == 20
    assert figures["error_rate"] == pytest.approx(0.1)


def test_no_traffic_has_no_quantiles_and_no_error_rate() -> None:
    figures = window(_counts(7, 0, 7), _counts(7, 0, 7), 5.0)
    assert figures["rps"] == 0 and figures["p50_ms"] is None and figures["error_rate"] is None


def test_summary_spans_the_window_and_series_one_interval_each() -> None:
    samples = [
        Sample(0.0, 1000.0, {"a": _counts(0, 0, 0)}),
        Sample(100.0, 1100.0, {"a": _counts(100, 0, 100)}),
        Sample(400.0, 1400.0, {"a": _counts(400, 0, 400), "b": _counts(10, 0, 10)}),
    ]
    now = Sample(430.0, 1430.0, {"a": _counts(430, 3, 430), "b": _counts(10, 0, 10)})
    figures = summary(samples, now, window_s=300.0)
    # The oldest sample inside five minutes is the one at 400 s; "b" appeared there.
    assert figures["a"]["rps"] == pytest.approx(1.0) and figures["a"]["seconds"] == 30.0
    assert figures["a"]["error_rate"] == pytest.approx(0.1)
    assert figures["b"]["requests"] == 0
    points = series([*samples, now], "a")
    assert [p["t"] for p in points] == [1100.0, 1400.0, 1430.0]
    assert [p["rps"] for p in points] == pytest.approx([1.0, 1.0, 1.0])
    assert [p["t"] for p in series([*samples, now], "b")] == [1400.0, 1430.0]


def test_sampler_keeps_a_bounded_history() -> None:
    metrics = GatewayMetrics()
    clock = [0.0]
    sampler = Sampler(metrics, interval=5.0, history=60.0, clock=lambda: clock[0])
    for _ in range(100):
        metrics.for_key("m-1").done(200, 0.01)
        sampler.record()
        clock[0] += 5.0
    assert len(sampler.samples) == 13
    body = sampler.stats("m-1", window_s=30.0)
    # The clock reads 500 now; the oldest sample of the last 30 s was taken at 470,
    # after call 95 of 100.
    assert body["keys"]["m-1"]["requests"] == 5
    assert body["keys"]["m-1"]["rps"] == pytest.approx(5 / 30)
    assert len(body["series"]) == 13  # 12 intervals of the ring, and the 5 s since
    # A moment after a sample is too short an interval to plot.
    sampler.record()
    clock[0] += 0.5
    assert len(sampler.stats("m-1")["series"]) == 12
