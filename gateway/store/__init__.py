"""Where inference records, baselines, metric snapshots and reference data live."""

from .base import Baseline, InferenceRecord, MetricsSnapshot, Store

__all__ = ["Baseline", "InferenceRecord", "MetricsSnapshot", "Store"]
