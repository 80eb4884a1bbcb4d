"""The monitor over a real SQLite store, and what Prometheus reads from it.

Known drift (one feature moved) and known quality (wrong labels sent back by
request id) go in; the exported series must show exactly that.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_wine

from gateway.edge.telemetry import GatewayMetrics
from gateway.quality import monitor as monitor_module
from gateway.quality.drift import WINDOWS
from gateway.quality.monitor import Monitor, last_calls
from gateway.records.stores.base import Baseline, InferenceRecord
from gateway.records.stores.sqlite import SQLiteStore

NOW = 1_800_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "inference.db")
    await s.open()
    yield s
    await s.close()


def _wine() -> tuple[pd.DataFrame, np.ndarray]:
    data = load_wine(as_frame=True)
    return data.data.rename(columns=lambda c: c.replace("/", "_")), data.target.to_numpy()


async def _feed(store: SQLiteStore, moved: str = "alcohol") -> None:
    """Every wine row once, `moved` shifted by three standard deviations, wrong labels back."""
    features, target = _wine()
    reference = features.assign(target=target)
    await store.set_reference("wine", "1", reference.to_csv(index=False).encode())
    await store.set_baseline("wine", "1", Baseline({"accuracy": 0.95, "f1_score": 0.95}, "run", 0))
    sent = features.assign(**{moved: features[moved] + 3 * features[moved].std()})
    records = []
    for i, start in enumerate(range(0, len(sent), 10)):
        chunk = sent.iloc[start : start + 10]
        records.append(InferenceRecord(
            f"rec{i}", "wine", "1", NOW - 3600 + i, "application/json",
            json.dumps({"dataframe_split": json.loads(chunk.to_json(orient="split"))}),
            json.dumps({"predictions": target[start : start + 10].tolist()}),
            request_id=f"req{i}",
        ))  # fmt: skip
    await store.insert_records(records)
    # Ground truth for the first 6 calls: every label off by one, so accuracy is 0.
    labels = [
        (f"rec{i}", [int((t + 1) % 3) for t in target[i * 10 : i * 10 + 10]]) for i in range(6)
    ]
    await store.label_records(labels, at=NOW)


def _series(metrics: GatewayMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(metrics.registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _monitor(store: SQLiteStore, keys: dict[str, tuple[str, str]], **kwargs: object) -> Monitor:
    options = {
        "interval": 60.0,
        "max_calls": 10_000,
        "max_chars": 1 << 30,
        "max_features": 50,
        **kwargs,
    }
    return Monitor(store, lambda: keys, clock=lambda: NOW, **options)  # type: ignore[arg-type]


async def test_the_series_show_exactly_the_shifted_feature_and_the_fallen_metric(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    compute = monitor_module.compute_status

    def spy(*args: object) -> object:
        threads.append(threading.current_thread().name)
        return compute(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(monitor_module, "compute_status", spy)
    await _feed(store)
    monitor = _monitor(store, {"wine-1": ("wine", "1")})
    metrics = GatewayMetrics()
    metrics.watch_quality(monitor)
    assert "modelgw_feature_drifted" not in _series(metrics)  # nothing computed yet
    await monitor.run_once()
    assert threads and threading.main_thread().name not in threads  # computed in a worker

    series = _series(metrics)
    drifted = {(s["feature"], s["window"]): v for s, v in series["modelgw_feature_drifted"]}
    assert {f for (f, _), v in drifted.items() if v == 1} == {"alcohol"}
    assert {w for (f, w), v in drifted.items() if f == "alcohol" and v == 1} == set(WINDOWS)
    assert len({f for f, _ in drifted}) == 13
    scores = {
        (s["feature"], s["window"]): s["method"] for s, _ in series["modelgw_feature_drift_score"]
    }
    assert scores[("alcohol", "last_week")] == "ks"  # 178 rows: a test, not a distance
    share = {s["window"]: v for s, v in series["modelgw_drifted_feature_share"]}
    assert share == {w: pytest.approx(1 / 13) for w in WINDOWS}
    metric = {(s["metric"], s["source"]): v for s, v in series["modelgw_model_metric"]}
    assert metric[("accuracy", "baseline")] == 0.95 and metric[("accuracy", "live")] == 0.0
    degraded = {s["metric"]: v for s, v in series["modelgw_model_degraded"]}
    assert degraded == {"accuracy": 1.0, "f1_score": 1.0}
    assert [labels for labels, _ in series["modelgw_monitor_age_seconds"]] == [{"key": "wine-1"}]
    assert series["modelgw_monitor_runs_total"] == [({}, 1.0)]

    # A scrape reads; it never computes.
    _series(metrics)
    assert len(threads) == 1


async def test_features_are_capped_and_the_share_still_counts_them_all(store: SQLiteStore) -> None:
    await _feed(store, moved="proline")  # the last column of the reference
    monitor = _monitor(store, {"wine-1": ("wine", "1")}, max_features=3)
    metrics = GatewayMetrics()
    metrics.watch_quality(monitor)
    await monitor.run_once()
    series = _series(metrics)
    exported = {s["feature"] for s, _ in series["modelgw_feature_drifted"]}
    assert exported == {"alcohol", "malic_acid", "ash"}  # the first three, by column order
    assert series["modelgw_monitor_features"] == [({"key": "wine-1"}, 13.0)]
    share = {s["window"]: v for s, v in series["modelgw_drifted_feature_share"]}
    assert share["last_week"] == pytest.approx(1 / 13)  # proline counted though not exported


async def test_an_undeployed_key_loses_its_series_and_a_failing_key_keeps_its_last(
    store: SQLiteStore,
) -> None:
    await _feed(store)
    keys = {"wine-1": ("wine", "1"), "other-1": ("other", "1")}
    monitor = _monitor(store, keys)
    await monitor.run_once()
    assert set(monitor.latest) == {"wine-1", "other-1"}
    del keys["other-1"]
    await monitor.run_once()
    assert set(monitor.latest) == {"wine-1"}

    before = monitor.latest["wine-1"]

    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monitor.read = broken  # type: ignore[method-assign,assignment]
    await monitor.run_once()  # logged and counted, never raised
    assert monitor.failures == 1 and monitor.latest["wine-1"] is before


async def test_a_pass_reads_the_newest_calls_bounded_in_count_and_in_text() -> None:
    """However large the logged calls, a monitoring pass holds a bounded window of them."""
    records = [InferenceRecord(id=str(i), model="m", version="1", ts=float(i),
                               content_type="application/json", inputs="x" * 100,
                               predictions="y" * 100) for i in range(50)]  # fmt: skip

    async def stream() -> AsyncIterator[InferenceRecord]:
        for record in records:
            yield record

    def ids(kept: list[InferenceRecord]) -> list[str]:
        return [r.id for r in kept]

    assert await last_calls(stream(), 100, 10**9) == (records, False)
    kept, capped = await last_calls(stream(), 10, 10**9)
    assert ids(kept) == [str(i) for i in range(40, 50)] and capped
    kept, capped = await last_calls(stream(), 100, 1000)  # 200 characters a call
    assert ids(kept) == [str(i) for i in range(45, 50)] and capped
    kept, capped = await last_calls(stream(), 100, 1)  # the newest call, always
    assert ids(kept) == ["49"] and capped
