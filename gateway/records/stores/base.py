"""The async store interface every backend (SQLite, MongoDB) implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class InferenceRecord:
    """One proxied call: what the model was asked and what it answered.

    `inputs` and `predictions` are the bodies as text (JSON or CSV), or already
    parsed JSON when the store keeps documents; the dataset export reads both.
    `id` makes writes idempotent, so a retried batch never duplicates rows.
    `request_id` is the call's `X-Request-ID`, by which ground truth arrives later;
    `ground_truth` is then one true value per input row, set once (`labelled_at`).
    `arm` says which side of a route produced the answer: `primary` (the caller's
    answer) or `shadow` (a copy sent to the route's shadow version, never returned).
    """

    id: str
    model: str
    version: str
    ts: float
    content_type: str
    inputs: Any
    predictions: Any
    request_id: str | None = None
    ground_truth: list[Any] | None = None
    labelled_at: float | None = None
    arm: str = "primary"


@dataclass(slots=True)
class Baseline:
    """The metrics a model version was trained to, from its MLflow run."""

    metrics: dict[str, float]
    source: str
    updated_at: float


@dataclass(slots=True)
class MetricsSnapshot:
    """Metrics computed from ground-truth feedback at one moment."""

    name: str
    ts: float
    metrics: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    n_samples: int = 0

    def as_dict(self) -> dict[str, Any]:
        from datetime import UTC, datetime

        return {
            "name": self.name,
            "timestamp": datetime.fromtimestamp(self.ts, UTC).isoformat(),
            "metrics": self.metrics,
            "skipped": self.skipped,
            "n_samples": self.n_samples,
        }


class Store(abc.ABC):
    """Async persistence of the data plane. Implementations never block the loop."""

    #: Exceptions that mean "the store is unavailable now; retry later".
    transient_errors: tuple[type[BaseException], ...] = (OSError,)

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def insert_records(self, records: Sequence[InferenceRecord]) -> None:
        """Write a batch in one round trip; records already stored are skipped."""

    @abc.abstractmethod
    def iter_records(
        self,
        model: str,
        version: str,
        start: float | None = None,
        end: float | None = None,
        *,
        labelled: bool = False,
    ) -> AsyncIterator[InferenceRecord]:
        """Records of one model version in time order, fetched in chunks.

        `labelled` keeps only the calls that have ground truth.
        """

    @abc.abstractmethod
    async def find_calls(
        self, model: str, version: str, request_ids: Sequence[str]
    ) -> list[InferenceRecord]:
        """The logged calls of one model version that carry any of these request ids."""

    @abc.abstractmethod
    async def label_records(self, labels: Sequence[tuple[str, list[Any]]], at: float) -> set[str]:
        """Set the ground truth of records (by record id) that have none yet.

        Returns the ids labelled now; a record labelled before keeps its first label.
        """

    @abc.abstractmethod
    async def purge_before(self, cutoff: float) -> int:
        """Delete inference records logged before `cutoff` (epoch seconds); how many went."""

    @abc.abstractmethod
    async def count_records(self, model: str, version: str) -> int: ...

    async def has_records(self, model: str, version: str) -> bool:
        """Whether any call of this version was ever logged; stores answer it cheaper."""
        return await self.count_records(model, version) > 0

    @abc.abstractmethod
    async def set_baseline(self, model: str, version: str, baseline: Baseline) -> None: ...

    @abc.abstractmethod
    async def get_baseline(self, model: str, version: str) -> Baseline | None: ...

    @abc.abstractmethod
    async def add_snapshot(self, model: str, version: str, snapshot: MetricsSnapshot) -> None: ...

    @abc.abstractmethod
    async def list_snapshots(self, model: str, version: str) -> list[MetricsSnapshot]:
        """Every snapshot, oldest first."""

    @abc.abstractmethod
    async def set_reference(self, model: str, version: str, csv: bytes) -> None: ...

    @abc.abstractmethod
    async def get_reference(self, model: str, version: str) -> bytes | None: ...

    async def get_snapshot(self, model: str, version: str, name: str) -> MetricsSnapshot | None:
        for snapshot in await self.list_snapshots(model, version):
            if snapshot.name == name:
                return snapshot
        return None
