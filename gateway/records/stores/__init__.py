"""Where inference records, baselines, metric snapshots and reference data live."""

from gateway.records.stores.base import Baseline, InferenceRecord, MetricsSnapshot, Store

__all__ = ["Baseline", "InferenceRecord", "MetricsSnapshot", "Store"]
