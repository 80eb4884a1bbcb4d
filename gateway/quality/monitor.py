"""Continuous monitoring: drift and live quality of every deployment, for Prometheus.

Every `interval` seconds, for each deployed key, the monitor reads the latest
`max_calls` logged calls, the reference data, the baseline and the calls
labelled by feedback in the last week, and computes drift per feature and
window plus the live metrics, in a worker thread (never on the event loop).
The results replace `latest`, which the Prometheus collector reads when it is
scraped: a scrape never computes. Labels stay bounded: at most `max_features`
features per key are exported (the first ones in the reference's column
order, so the series keep their names from run to run); the drifted share
counts every feature.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.quality import drift
from gateway.quality.report import DEFAULT_TOLERANCE, current_frame, reference_frame
from gateway.quality.scores import is_degraded, score_calls
from gateway.records.stores.base import Baseline, InferenceRecord, Store

if TYPE_CHECKING:
    from gateway.settings import Settings

logger = logging.getLogger(__name__)

# Live metrics are computed over the calls of this window that have ground truth.
LIVE_WINDOW = "last_week"


def drift_config(settings: Settings, exclude: frozenset[str] = frozenset()) -> drift.DriftConfig:
    """The drift decision as the GATEWAY_DRIFT_* settings say."""
    return drift.DriftConfig(
        p_value=settings.drift_p_value,
        wasserstein=settings.drift_wasserstein,
        jensenshannon=settings.drift_jensenshannon,
        large_sample=settings.drift_large_sample,
        correction=settings.drift_correction,
        drift_share=settings.drift_share,
        exclude=exclude,
    )


def text_size(record: InferenceRecord) -> int:
    return len(record.inputs or "") + len(record.predictions or "")


async def last_calls(
    source: AsyncIterator[InferenceRecord], limit: int, max_chars: int
) -> tuple[list[InferenceRecord], bool]:
    """The newest calls of a time-ordered stream, in order, and whether older ones were left.

    At most `limit` calls and `max_chars` of their logged text (the newest call
    always), so memory is bounded however large the calls were.
    """
    window: deque[InferenceRecord] = deque()
    chars, capped = 0, False
    async for record in source:
        window.append(record)
        chars += text_size(record)
        while len(window) > 1 and (len(window) > limit or chars > max_chars):
            chars -= text_size(window.popleft())
            capped = True
    return list(window), capped


@dataclass
class KeyStatus:
    """One key's latest results: what the collector exports."""

    key: str
    computed_at: float
    features: list[drift.FeatureDrift] = field(default_factory=list)  # capped
    windows: dict[str, drift.WindowDrift] = field(default_factory=dict)
    n_features: int = 0  # compared features, before the cap
    rows: dict[str, int] = field(default_factory=dict)  # logged rows per window
    baseline: dict[str, float] = field(default_factory=dict)
    live: dict[str, float] = field(default_factory=dict)
    live_rows: int = 0
    degraded: dict[str, bool] = field(default_factory=dict)


@dataclass
class KeyData:
    """What the store holds for one key, read on the event loop, computed on in a thread."""

    key: str
    reference_csv: bytes | None
    calls: list[InferenceRecord]
    baseline: Baseline | None
    labelled: list[InferenceRecord]


def compute_status(
    data: KeyData, now: float, config: drift.DriftConfig, max_features: int, tolerance: float
) -> KeyStatus:
    """Drift and live metrics of one key. Pure and CPU-bound: run it in a worker thread."""
    status = KeyStatus(data.key, now)
    reference = reference_frame(data.reference_csv)
    current = current_frame(data.calls)
    if not current.empty:
        status.rows = {w: len(drift.window_frame(current, w, now)) for w in drift.WINDOWS}
    if not reference.empty and not current.empty:
        table = drift.drift_table(reference, current, now, config)
        names = drift.features_of(reference, current, config.exclude)
        exported = set(names[:max_features])
        status.n_features = len(names)
        status.features = [row for row in table if row.feature in exported]
        status.windows = {w: drift.window_drift(w, table, config) for w in drift.WINDOWS}
    if data.baseline is not None and data.baseline.metrics:
        status.baseline = dict(data.baseline.metrics)
        if data.labelled:
            values, _, rows = score_calls(list(status.baseline), data.labelled,
                                          data.reference_csv)  # fmt: skip
            status.live, status.live_rows = values, rows
            for name, value in values.items():
                verdict = is_degraded(name, status.baseline[name], value, tolerance)
                if verdict is not None:
                    status.degraded[name] = verdict
    return status


class Monitor:
    """Owns the monitoring task and the latest results per key."""

    def __init__(
        self,
        store: Store,
        deployments: Callable[[], Mapping[str, tuple[str, str]]],
        *,
        interval: float,
        max_calls: int,
        max_chars: int,
        max_features: int,
        config: drift.DriftConfig | None = None,
        tolerance: float = DEFAULT_TOLERANCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.deployments = deployments
        self.interval = interval
        self.max_calls = max_calls
        self.max_chars = max_chars
        self.max_features = max_features
        self.config = config or drift.DriftConfig()
        self.tolerance = tolerance
        self._clock = clock
        self.latest: dict[str, KeyStatus] = {}
        self.runs = 0
        self.failures = 0
        self.last_run_at: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="quality-monitor")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)

    async def run_once(self) -> None:
        """Compute every deployed key once; a key that fails keeps its last results."""
        deployed = dict(self.deployments())
        for key in list(self.latest):
            if key not in deployed:
                del self.latest[key]  # undeployed: its series go with it
        for key, (name, version) in deployed.items():
            try:
                self.latest[key] = await self.check(key, name, version)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                self.failures += 1
                if isinstance(exc, self.store.transient_errors):
                    logger.warning("monitor: the store is unavailable for %s (%s)", key, exc)
                else:
                    logger.exception("monitor: checking %s failed", key)
        self.runs += 1
        self.last_run_at = self._clock()

    async def read(self, key: str, name: str, version: str, now: float) -> KeyData:
        store = self.store
        span = drift.WINDOWS[LIVE_WINDOW]
        since = now - span if span is not None else None
        return KeyData(
            key=key,
            reference_csv=await store.get_reference(name, version),
            calls=(await self._last(store.iter_records(name, version)))[0],
            baseline=await store.get_baseline(name, version),
            labelled=(await self._last(store.iter_records(name, version, since, labelled=True)))[0],
        )

    async def _last(
        self, source: AsyncIterator[InferenceRecord]
    ) -> tuple[list[InferenceRecord], bool]:
        return await last_calls(source, self.max_calls, self.max_chars)

    async def check(self, key: str, name: str, version: str) -> KeyStatus:
        now = self._clock()
        data = await self.read(key, name, version, now)
        return await asyncio.to_thread(
            compute_status, data, now, self.config, self.max_features, self.tolerance
        )
