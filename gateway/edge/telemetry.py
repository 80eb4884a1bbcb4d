"""Prometheus metrics on an injected registry, with bounded labels.

Labels are deployment keys (every key that is not deployed counts as
`__unknown__`), status codes, replica indexes and fixed outcome names; never
raw paths or request ids. A key's per-call metrics (calls by status, latency,
backend latency, in flight) are plain numbers bound once per key and read at
scrape time, so a request pays a dict look-up, a few additions and one bisect.
State that already lives elsewhere (replica health, restarts, the log writer's
counters) is read at scrape time by a collector instead of being mirrored on
every change. So are the quality monitor's results (drift, live metrics): read, never computed, at
scrape time; features per key are capped by the monitor.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from gateway.records.writer import InferenceLogger
from supervisor.deployment import Deployment

if TYPE_CHECKING:
    from gateway.quality.monitor import Monitor

UNKNOWN_KEY = "__unknown__"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)  # fmt: skip


class InFlight:
    """Calls of one key being served now (a gauge the event loop alone moves)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


class Durations:
    """One key's latency histogram: a count per bucket of LATENCY_BUCKETS (and +Inf)."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # Prometheus buckets are `le`: a value equal to a bound counts in that bound's.
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        total, out = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, math.inf), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), float(total)))
        return out


class KeyMetrics:
    """One deployment key's per-call metrics: plain numbers, read at scrape time.

    Calls are counted and timed on the event loop only, so a call pays a few integer
    additions and one bisect; prometheus_client's children would take a lock and walk
    the buckets in Python for each (about a tenth of a proxied call's CPU).
    """

    __slots__ = ("backend", "by_code", "in_flight", "key", "latency")

    def __init__(self, key: str) -> None:
        self.key = key
        self.by_code: dict[int, int] = {}
        self.latency = Durations()
        self.backend = Durations()
        self.in_flight = InFlight()

    def codes(self) -> list[int]:
        return list(self.by_code)

    def done(self, status: int, seconds: float) -> None:
        by_code = self.by_code
        by_code[status] = by_code.get(status, 0) + 1
        self.latency.observe(seconds)


class KeyFamily:
    """A per-key metric family exported from the keys' KeyMetrics (see `collect`)."""

    def __init__(self, keys: dict[str, KeyMetrics], kind: str, name: str, doc: str) -> None:
        self._keys, self._kind, self.name, self.doc = keys, kind, name, doc

    def collect(self) -> list[Metric]:
        keys = list(self._keys.values())
        if self._kind == "requests":
            counter = CounterMetricFamily(self.name, self.doc, labels=["key", "code"])
            for bound in keys:
                for code, count in list(bound.by_code.items()):
                    counter.add_metric([bound.key, str(code)], float(count))
            return [counter]
        if self._kind == "in_flight":
            gauge = GaugeMetricFamily(self.name, self.doc, labels=["key"])
            for bound in keys:
                gauge.add_metric([bound.key], float(bound.in_flight.value))
            return [gauge]
        histogram = HistogramMetricFamily(self.name, self.doc, labels=["key"])
        for bound in keys:
            durations = bound.latency if self._kind == "latency" else bound.backend
            histogram.add_metric([bound.key], durations.cumulative(), durations.sum)
        return [histogram]


class KeyCollector(Collector):
    """Every per-key family, for the registry."""

    def __init__(self, families: list[KeyFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            yield from family.collect()


class GatewayMetrics:
    """Every metric the gateway exports, on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self._keys: dict[str, KeyMetrics] = {}
        keys = self._keys
        self.requests = KeyFamily(
            keys, "requests", "modelgw_requests",
            "Inference calls by deployment key and HTTP status.",
        )  # fmt: skip
        self.latency = KeyFamily(
            keys, "latency", "modelgw_request_duration_seconds",
            "Time an inference call spent in the gateway, end to end.",
        )  # fmt: skip
        self.backend_latency = KeyFamily(
            keys, "backend", "modelgw_backend_duration_seconds",
            "Time an inference call spent waiting for its backend.",
        )  # fmt: skip
        self.in_flight = KeyFamily(
            keys, "in_flight", "modelgw_requests_in_flight", "Inference calls being served now."
        )
        r.register(KeyCollector([self.requests, self.latency, self.backend_latency,
                                 self.in_flight]))  # fmt: skip
        self.deploy_duration = Gauge("modelgw_deploy_duration_seconds",
                                     "Seconds the last deploy of a key took to become ready.",
                                     ["key"], registry=r)  # fmt: skip
        self.free_ports = Gauge("modelgw_free_ports",
                                "Ports of the backend range that no one holds.",
                                registry=r)  # fmt: skip
        # Traffic management: admission queues, shed calls and wake-ups from idle.
        self.queue_time = Histogram("modelgw_queue_duration_seconds",
                                    "Time an admitted call waited for a free slot.",
                                    ["key"], buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.shed = Counter("modelgw_shed", "Calls refused with 429 because the queue was full.",
                            ["key"], registry=r)  # fmt: skip
        self.refused_connections = Counter(
            "modelgw_refused_connections",
            "Client connections refused at once (503) because GATEWAY_MAX_CLIENT_CONNECTIONS"
            " were open.", registry=r,
        )  # fmt: skip
        self.cold_starts = Counter("modelgw_cold_starts",
                                   "Wake-ups of an idle (scaled to zero) deployment.",
                                   ["key"], registry=r)  # fmt: skip
        self.cold_start_time = Histogram("modelgw_cold_start_seconds",
                                         "Time from the call that woke an idle deployment to "
                                         "its first ready backend.", ["key"],
                                         buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip

    def for_key(self, key: str) -> KeyMetrics:
        bound = self._keys.get(key)
        if bound is None:
            bound = self._keys[key] = KeyMetrics(key)
        return bound

    def forget(self, key: str) -> None:
        """Drop an undeployed key's series, so label sets stay bounded over time."""
        self._keys.pop(key, None)
        for metric in (self.deploy_duration, self.queue_time, self.shed, self.cold_starts,
                       self.cold_start_time):  # fmt: skip
            try:
                metric.remove(key)
            except KeyError:
                pass

    def watch(
        self,
        table: dict[str, Deployment],
        log: Callable[[], InferenceLogger | None],
    ) -> None:
        self.registry.register(StateCollector(table, log))

    def watch_quality(self, monitor: Monitor) -> None:
        self.registry.register(QualityCollector(monitor))


class StateCollector(Collector):
    """Backend and log-writer state, read when Prometheus scrapes."""

    def __init__(
        self, table: dict[str, Deployment], log: Callable[[], InferenceLogger | None]
    ) -> None:
        self._table = table
        self._log = log

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("modelgw_backend_up", "1 when the backend process is running.",
                               labels=["key", "replica", "port"])  # fmt: skip
        healthy = GaugeMetricFamily("modelgw_backend_healthy",
                                    "1 when the backend answers its health checks.",
                                    labels=["key", "replica", "port"])  # fmt: skip
        restarts = CounterMetricFamily("modelgw_backend_restarts",
                                       "Times the supervisor restarted the backend.",
                                       labels=["key", "replica", "port"])  # fmt: skip
        for key, deployment in list(self._table.items()):
            for replica in deployment.replicas:
                labels = [key, str(replica.index), str(replica.port)]
                up.add_metric(labels, 1.0 if replica.state.value == "running" else 0.0)
                healthy.add_metric(labels, 1.0 if replica.routable else 0.0)
                restarts.add_metric(labels, float(replica.restarts))
        yield up
        yield healthy
        yield restarts
        log = self._log()
        depth = GaugeMetricFamily("modelgw_inference_log_queue_depth",
                                  "Inference records waiting in memory to be written.")  # fmt: skip
        store_up = GaugeMetricFamily("modelgw_inference_log_store_up",
                                     "1 when the last write to the store succeeded.")  # fmt: skip
        records = CounterMetricFamily("modelgw_inference_log_records",
                                      "Inference records by what happened to them.",
                                      labels=["outcome"])  # fmt: skip
        if log is not None:
            depth.add_metric([], float(log.depth))
            store_up.add_metric([], 1.0 if log.stats.store_up else 0.0)
            for outcome in ("submitted", "journaled", "unjournaled", "written", "retried",
                            "spooled", "replayed", "torn", "lost", "sampled_out"):  # fmt: skip
                records.add_metric([outcome], float(getattr(log.stats, outcome)))
        yield depth
        yield store_up
        yield records


class QualityCollector(Collector):
    """The quality monitor's latest results, read when Prometheus scrapes."""

    def __init__(self, monitor: Monitor, clock: Callable[[], float] = time.time) -> None:
        self._monitor = monitor
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        score = GaugeMetricFamily(
            "modelgw_feature_drift_score",
            "What the drift method compared with its threshold: the corrected p-value (ks, "
            "chi2: drift when below) or the distance (wasserstein, jensenshannon: drift when "
            "at or above).",
            labels=["key", "feature", "window", "method"],
        )
        drifted = GaugeMetricFamily("modelgw_feature_drifted",
                                    "1 when the feature has drifted in the window.",
                                    labels=["key", "feature", "window"])  # fmt: skip
        share = GaugeMetricFamily("modelgw_drifted_feature_share",
                                  "Share of the tested features that drifted in the window.",
                                  labels=["key", "window"])  # fmt: skip
        rows = GaugeMetricFamily("modelgw_monitor_logged_rows",
                                 "Logged input rows the window's drift was computed on.",
                                 labels=["key", "window"])  # fmt: skip
        features = GaugeMetricFamily("modelgw_monitor_features",
                                     "Features compared for drift (all, before the export cap).",
                                     labels=["key"])  # fmt: skip
        metric = GaugeMetricFamily("modelgw_model_metric",
                                   "Model metrics: from the MLflow run (baseline) or from "
                                   "feedback on last week's calls (live).",
                                   labels=["key", "metric", "source"])  # fmt: skip
        degraded = GaugeMetricFamily("modelgw_model_degraded",
                                     "1 when the live metric is worse than the baseline by more "
                                     "than the tolerance.", labels=["key", "metric"])  # fmt: skip
        age = GaugeMetricFamily("modelgw_monitor_age_seconds",
                                "Seconds since the key's drift and metrics were computed.",
                                labels=["key"])  # fmt: skip
        for key, status in list(self._monitor.latest.items()):
            for row in status.features:
                if row.method is not None and row.score is not None:
                    score.add_metric([key, row.feature, row.window, row.method], row.score)
                if row.drifted is not None:
                    drifted.add_metric([key, row.feature, row.window], float(row.drifted))
            for window, result in status.windows.items():
                if result.share is not None:
                    share.add_metric([key, window], result.share)
            for window, count in status.rows.items():
                rows.add_metric([key, window], float(count))
            features.add_metric([key], float(status.n_features))
            for name, value in status.baseline.items():
                metric.add_metric([key, name, "baseline"], float(value))
            for name, value in status.live.items():
                metric.add_metric([key, name, "live"], value)
            for name, verdict in status.degraded.items():
                degraded.add_metric([key, name], float(verdict))
            age.add_metric([key], max(0.0, self._clock() - status.computed_at))
        runs = CounterMetricFamily("modelgw_monitor_runs",
                                   "Monitoring passes over every deployed key.")  # fmt: skip
        runs.add_metric([], float(self._monitor.runs))
        failures = CounterMetricFamily("modelgw_monitor_failures",
                                       "Keys whose monitoring computation failed.")  # fmt: skip
        failures.add_metric([], float(self._monitor.failures))
        yield from (score, drifted, share, rows, features, metric, degraded, age, runs, failures)
